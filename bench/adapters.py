"""How fast the adapter pool switches LoRAs and strengths, against reloading, in one process.

    PYTHONPATH=. python bench/adapters.py [--repeats 5] [--out bench/results/adapters.md]

Prints three ratios on the embedded tiny model (CPU unless a GPU is there):
  1. a LoRA swap ÷ reloading the base pipeline from disk and loading the LoRA (what tools without a pool do);
     measured for a switch between two loaded LoRAs and for a hot-swap of a new file into the compiled slot;
  2. a strength change ÷ one denoising step (one UNet call, with classifier-free guidance);
  3. a generation with an unfused LoRA ÷ the same generation on the base alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pool_loras import write_lora  # noqa: E402

from trainer.generate import AdapterPool  # noqa: E402
from trainer.models.tiny import build_tiny_pipeline, save_tiny_model  # noqa: E402


def median_time(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reload_and_load(folder: Path, lora: Path) -> None:
    """The baseline: what a tool without a pool does for every change of LoRA."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="lora")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    pipe = build_tiny_pipeline("sd15")
    folder = save_tiny_model("sd15", work / "tiny")
    files = [write_lora(pipe, work / f"lora{i}.safetensors", seed=i, fmt="kohya", rank=8) for i in range(3)]

    reload = median_time(lambda: reload_and_load(folder, files[0]), args.repeats)

    pool = AdapterPool("tiny")
    pool.load("a", files[0])
    pool.load("b", files[1])
    flip = iter(["a", "b"] * 1000)
    switch = median_time(lambda: pool.set_strengths({next(flip): 1.0}), args.repeats * 4)

    slot_pool = AdapterPool("tiny", compile=True)  # never generates here, so it never compiles
    slot_pool.load("first", files[0])
    names = iter(range(1000))

    def hotswap() -> None:
        name = f"n{next(names)}"
        slot_pool.load(name, files[1 + len(name) % 2])
        slot_pool.set_strengths({name: 1.0})
        slot_pool.unload(name)

    swap_file = median_time(hotswap, args.repeats)

    weights = iter([0.3, 0.6, 0.9] * 1000)
    strength = median_time(lambda: pool.set_strengths({"a": next(weights)}), args.repeats * 4)
    unet = pool.pipe.unet
    size = pool.pipe.unet.config.sample_size
    latents = torch.randn(2, 4, size, size)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    pool.set_strengths({})
    with torch.no_grad():
        step = median_time(lambda: unet(latents, torch.tensor(500), encoder_hidden_states=text), args.repeats)

    def render(strengths):
        return lambda: pool.generate("a lighthouse", seed=1, steps=10, strengths=strengths)

    base_gen = median_time(render({}), args.repeats)
    lora_gen = median_time(render({"a": 1.0}), args.repeats)

    device = pool.device
    rows = [
        ("reload base from disk + load LoRA", reload, None),
        ("switch between two loaded LoRAs (set_adapters)", switch, switch / reload),
        ("hot-swap a new LoRA file into the slot (read, check, copy)", swap_file, swap_file / reload),
        ("strength change (set_adapters)", strength, None),
        ("one denoising step (UNet, batch 2 for CFG, 128 px)", step, strength / step),
        ("generation, base alone (10 steps, 128 px)", base_gen, None),
        ("generation, unfused LoRA at 1.0", lora_gen, lora_gen / base_gen),
    ]
    lines = [f"Tiny SD 1.x model, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"median of {args.repeats}+ runs.", "", "| measurement | time | ratio |", "|---|---|---|"]
    for label, seconds, ratio in rows:
        lines.append(f"| {label} | {seconds * 1000:.2f} ms | {'' if ratio is None else f'{ratio:.4f}'} |")
    lines += ["", "Ratios: swap ÷ (reload + load) on the switch and hot-swap rows (target ≤ 0.05); strength change "
              "÷ one denoising step on the step row; LoRA generation ÷ base generation on the last row."]
    text_out = "\n".join(lines)
    print(text_out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text_out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
