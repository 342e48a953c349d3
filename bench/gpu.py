"""The GPU benchmark: SD 1.5 and SDXL at their real shapes (random weights, nothing downloaded), our training
step against a step written like diffusers' example scripts, and the checks a first GPU run must pass.

    python bench/gpu.py                     # on a GPU: sd15 at 512 px, sdxl at 1024 px, bf16, ≤ 5 min
    python bench/gpu.py --json out.json     # also the rows as JSON
    python bench/gpu.py --tiny              # the same cases at tiny size on the CPU (what the tests run)
    python bench/gpu.py --checks            # fp16 and bf16 training, the preview pool, 2-process NCCL if 2 GPUs

Each case builds the family's UNet, VAE and text encoder(s) from the published configs shipped in
`trainer/models/assets/` (or the tiny models with `--tiny`) on the device, frozen weights in the compute dtype,
LoRA rank 4 on to_q/to_k/to_v/to_out.0 in float32, autocast, AdamW, gradient clipping at 1. Two loops:
- **ours**: `trainer.loop.training_step` on latents and text embeddings cached before the step (as `train()`
  caches them), fused AdamW, LoRA attached by `trainer.network.add_lora`;
- **example**: what `train_text_to_image_lora.py` / `_sdxl.py` do each step: encode the pixels with the VAE
  (float32 for SDXL, whose VAE overflows in fp16), run the text encoder(s) on token ids, then the UNet, plain
  AdamW (foreach), `unet.add_adapter(LoraConfig(...))`.
Variants: batch 1 and 8, with and without gradient checkpointing, and ours with `torch.compile` (the UNet,
batch 8 only, since each new shape recompiles). A case runs `--warmup` steps, then times `--steps` steps with
the device synchronised. Cases past `--budget-s` are listed as not run.

FLOPs per image are counted with `torch.utils.flop_counter.FlopCounterMode` over one UNet forward and backward
at batch 1 without checkpointing: the work every loop must do for one image (matmuls, convolutions and
attention; elementwise ops are not counted). Achieved TFLOP/s = that × images/s, the same numerator for both
loops, so the example's extra VAE and text-encoder work and checkpointing's recomputation show as a lower MFU
rather than as more useful work. MFU = achieved / the device's dense bf16 peak (`--peak-tflops`, or known for
H100/H200/A100/L40S/4090); none on a CPU. Peak memory is `torch.cuda.max_memory_allocated` per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ASSETS = Path(__file__).resolve().parents[1] / "trainer" / "models" / "assets"
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "4090": 165.2}
RESOLUTION = {"sd15": 512, "sdxl": 1024}
TINY_RESOLUTION = 64
PROMPT = "a red circle on a blue background"
CASE_FIELDS = ("family", "loop", "batch", "checkpointing", "compile")


def build(family: str, device: str, dtype: torch.dtype, tiny: bool):
    """(base, resolution): a `Base`-like namespace with the family's pipeline parts on `device`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from trainer.models.families import FAMILIES

    fam = FAMILIES[family]
    if tiny:
        from trainer.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(family)
        parts = {n: getattr(pipe, n) for n in ("unet", "vae", *fam.text_encoder_names)}
        parts.update(tokenizer=pipe.tokenizer, tokenizer_2=getattr(pipe, "tokenizer_2", None),
                     scheduler=pipe.scheduler)
        resolution = TINY_RESOLUTION
    else:
        folder = ASSETS / family
        with torch.device(device):  # random weights made on the device: no float32 copy of SDXL on the host
            parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                     "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))}
            for name in fam.text_encoder_names:
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                parts[name] = cls(CLIPTextConfig.from_pretrained(folder / name))
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        parts["tokenizer_2"] = (CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
                                if (folder / "tokenizer_2").is_dir() else None)
        parts["scheduler"] = DDPMScheduler.from_pretrained(folder / "scheduler")
        resolution = RESOLUTION[family]
    for name in ("unet", "vae", *fam.text_encoder_names):
        module = parts[name].requires_grad_(False)
        vae_dtype = torch.float32 if family == "sdxl" and dtype == torch.float16 else dtype
        torch.nn.Module.to(module, device, vae_dtype if name == "vae" else dtype)
    pipe = SimpleNamespace(**parts)
    return SimpleNamespace(pipe=pipe, family=fam, prediction_type="epsilon"), resolution


def attach_lora(base, loop: str) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    from trainer.config import NetworkConfig
    from trainer.network import add_lora, trainable_parameters

    if loop == "ours":
        network = NetworkConfig(rank=4, alpha=4)
        add_lora(base, network)
        params = [p for group in trainable_parameters(base, network).values() for p in group]
    else:
        base.pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                              target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [p for p in base.pipe.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def make_step(base, loop: str, batch: int, resolution: int, dtype: torch.dtype, params):
    """A function running one optimizer step of `loop` at `batch` images."""
    from trainer.config import load_config
    from trainer.examples import TrainBatch
    from trainer.loop import training_step
    from trainer.models.families import ImageSizes

    pipe, family = base.pipe, base.family
    device = pipe.unet.device
    config = load_config(None, {"train.min_snr_gamma": 0.0})
    sizes = ImageSizes([(resolution, resolution)] * batch, [(0, 0)] * batch, (resolution, resolution))
    captions = [PROMPT] * batch
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    pixels = torch.randn(batch, 3, resolution, resolution, device=device)
    if loop == "ours":
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        with torch.no_grad(), autocast:
            latents = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.sample().float() * 0.18215
            text = family.encode_text(pipe, captions)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)

    def step() -> None:
        with autocast:
            if loop == "ours":
                batch_ = TrainBatch(latents, text, sizes)
            else:
                with torch.no_grad():
                    encoded = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.sample().float() * 0.18215
                    batch_ = TrainBatch(encoded, family.encode_text(pipe, captions), sizes)
            loss = training_step(pipe.unet, pipe.scheduler, base, batch_, config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def unet_flops_per_image(base, resolution: int, dtype: torch.dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.config import load_config
    from trainer.examples import TrainBatch
    from trainer.loop import training_step
    from trainer.models.families import ImageSizes

    pipe = base.pipe
    device = pipe.unet.device
    latents = torch.randn(1, pipe.unet.config.in_channels, resolution // 8, resolution // 8, device=device)
    text = base.family.encode_text(pipe, [PROMPT])
    batch = TrainBatch(latents, text, ImageSizes([(resolution, resolution)], [(0, 0)], (resolution, resolution)))
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, dtype=dtype,
                                                                   enabled=dtype != torch.float32):
        training_step(pipe.unet, pipe.scheduler, base, batch, load_config()).backward()
    for p in pipe.unet.parameters():
        p.grad = None
    return counter.get_total_flops()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(family, loop, batch, checkpointing, compiled, args, device, dtype) -> dict:
    base, resolution = build(family, device, dtype, args.tiny)
    params = attach_lora(base, loop)
    base.pipe.unet.train()
    flops = unet_flops_per_image(base, resolution, dtype)
    if checkpointing:
        base.pipe.unet.enable_gradient_checkpointing()
    if compiled:
        base.pipe.unet = torch.compile(base.pipe.unet)
    step = make_step(base, loop, batch, resolution, dtype, params)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - started
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    images_per_s = batch / step_s
    achieved = flops * images_per_s / 1e12
    peak = peak_tflops(args, device)
    return {"family": family, "loop": loop, "batch": batch, "checkpointing": checkpointing, "compile": compiled,
            "resolution": resolution, "step_s": step_s, "images_per_s": images_per_s, "warmup_s": warmup_s,
            "unet_train_tflop_per_image": flops / 1e12, "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None,
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None}


def peak_tflops(args, device: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def cases(args) -> list[tuple]:
    out = []
    for family in args.families.split(","):
        for loop in ("example", "ours"):
            for batch in args.batches:
                for checkpointing in (False, True):
                    out.append((family, loop, batch, checkpointing, False))
        if args.compile:
            out.append((family, "ours", max(args.batches), False, True))
    return out


def run_checks(device: str) -> list[dict]:
    """What a first GPU run must show beyond speed: mixed-precision training, previews on the device, NCCL."""
    import tempfile

    from trainer.config import load_config
    from trainer.generate import AdapterPool
    from trainer.loop import train

    results = []
    precisions = ("fp16", "bf16") if device.startswith("cuda") else ("no", "bf16")
    data = Path(__file__).resolve().parents[1] / "datasets" / "example"
    with tempfile.TemporaryDirectory() as out:
        for precision in precisions:
            config = load_config(None, {"data.path": str(data), "data.resolution": 64, "train.steps": 10,
                                        "train.mixed_precision": precision, "optim.learning_rate": 1e-3,
                                        "export.output_dir": f"{out}/{precision}", "export.name": precision})
            result = train(config)
            ok = all(torch.isfinite(torch.tensor(result.losses)))
            results.append({"check": f"train tiny, mixed_precision={precision}", "ok": bool(ok),
                            "detail": f"final loss {result.final_loss:.4f}"})
        pool = AdapterPool("tiny", device=device)
        pool.load("trained", result.outputs[0])
        base = pool.generate(PROMPT, seed=1, steps=4, width=64, height=64, output_type="np")[0]
        off = pool.generate(PROMPT, seed=1, steps=4, width=64, height=64, output_type="np",
                            strengths={"trained": 0.0})[0]
        on = pool.generate(PROMPT, seed=1, steps=4, width=64, height=64, output_type="np",
                           strengths={"trained": 1.0})[0]
        results.append({"check": f"preview pool on {device}: strength 0 is the base image, 1 changes it",
                        "ok": bool((base == off).all() and (on != base).any()), "detail": pool.pipe.device.type})
        if device.startswith("cuda") and torch.cuda.device_count() >= 2:
            results.append(_nccl_check(data, out))
    return results


def _nccl_check(data: Path, out: str) -> dict:
    import subprocess

    command = [sys.executable, "-m", "trainer.cli", "train", "--data", str(data), "--resolution", "64",
               "--steps", "10", "--num-processes", "2", "--output", f"{out}/nccl"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return {"check": "2-process training over NCCL", "ok": done.returncode == 0, "detail": done.stderr[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU-sized), 64 px")
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--budget-s", type=float, default=270, help="stop starting cases after this long")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak")
    parser.add_argument("--checks", action="store_true", help="run the GPU checks instead of the benchmark")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = _checks(device) if args.checks else _bench(args, device, dtype)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": _device_name(device), "rows": rows}, indent=1))


def _bench(args, device: str, dtype: torch.dtype) -> list[dict]:
    started = time.perf_counter()
    rows = []
    print(f"device: {_device_name(device)}, dtype {dtype}")
    print("| family | loop | batch | checkpointing | compile | images/s | TFLOP/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases(args):
        if time.perf_counter() - started > args.budget_s:
            rows.append(dict(zip(CASE_FIELDS, case, strict=True), skipped=True))
            print(f"| {' | '.join(map(str, case))} | not run (over --budget-s) | | | |", flush=True)
            continue
        row = run_case(*case, args, device, dtype)
        rows.append(row)
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        memory = f"{row['peak_memory_bytes'] / 2**30:.1f} GiB" if row["peak_memory_bytes"] else "n/a"
        print(f"| {' | '.join(map(str, case))} | {row['images_per_s']:.2f} | {row['achieved_tflops']:.3g} | "
              f"{mfu} | {memory} |", flush=True)
    return rows


def _checks(device: str) -> list[dict]:
    rows = run_checks(device)
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['check']}: {row['detail']}", flush=True)
    if not all(row["ok"] for row in rows):
        raise SystemExit(1)
    return rows


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
