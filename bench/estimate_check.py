"""Check `trainer.estimate` against a measured training step of the tiny models on this CPU.

    python bench/estimate_check.py                       # the table in bench/RESULTS.md
    python bench/estimate_check.py --case tiny,256,4,0   # one case: model, resolution, batch, checkpointing

How the step is measured: a fresh subprocess per case (nothing left over from earlier cases) loads the tiny
model, attaches LoRA (`trainer.network.add_lora`), places the weights (`precision.place_weights`, float32 on
CPU) and builds the loop's fused AdamW; it runs one warm-up step (the optimizer state and every lazy buffer
exist from then on), then resets the kernel's resident-set high-water mark (`echo 5 > /proc/self/clear_refs`),
runs one more step exactly as `trainer.loop` does (`training_step`, backward, clipping, `optimizer.step`,
`zero_grad(set_to_none=True)`) and reads `VmHWM - VmRSS` from /proc/self/status: the memory the step added on
top of the resident model and optimizer state. glibc is told to give large blocks back (mmap above 64 KiB),
so freed tensors leave the resident set at once. The estimate's matching part is the step's own memory:
activations + workspace + the LoRA gradients (weights and optimizer state are exact counts in both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["tiny,256,4,0", "tiny,256,8,0", "tiny,256,8,1", "tiny,384,4,0", "tiny-sdxl,256,4,0",
         "tiny-sdxl,256,4,1"]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model: str, resolution: int, batch: int, checkpointing: bool) -> dict:
    """One case in this process: the step's added resident bytes (see the module docstring)."""
    import torch
    from diffusers import DDPMScheduler

    from trainer.config import load_config
    from trainer.examples import TrainBatch
    from trainer.loop import training_step
    from trainer.models import load_base
    from trainer.models.families import ImageSizes
    from trainer.network import add_lora, trainable_parameters
    from trainer.optimizers import build_optimizer
    from trainer.precision import place_weights

    torch.manual_seed(0)
    config = load_config(None, {"model.base_model": model, "train.batch_size": batch,
                                "data.resolution": resolution, "train.gradient_checkpointing": checkpointing,
                                "train.mixed_precision": "no"})
    base = load_base(config.model)
    add_lora(base, config.network)
    params = trainable_parameters(base, config.network)
    place_weights(base, params, torch.device("cpu"), "no")
    if checkpointing:
        base.pipe.unet.enable_gradient_checkpointing()
    base.pipe.unet.train()
    optimizer, _ = build_optimizer(params, config, 1)
    scheduler = DDPMScheduler.from_config(base.pipe.scheduler.config)
    text = base.family.encode_text(base.pipe, [""] * batch)  # cached text, as the loop keeps it
    side = resolution // 8
    sizes = ImageSizes([(resolution, resolution)] * batch, [(0, 0)] * batch, (resolution, resolution))
    flat = [p for group in params.values() for p in group]

    def step() -> None:
        latents = torch.randn(batch, 4, side, side)
        loss = training_step(base.pipe.unet, scheduler, base, TrainBatch(latents, text, sizes), config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flat, config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status("VmRSS")
    step()
    return {"measured_step_bytes": _status("VmHWM") - baseline}


def run_case(case: str) -> dict:
    """Measure `case` in a fresh subprocess, estimate it here, and compare the step's own bytes."""
    from trainer.config import load_config
    from trainer.estimate import estimate_step

    model, resolution, batch, checkpointing = case.split(",")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--measure", case], env=env, capture_output=True,
                         text=True, timeout=900, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])["measured_step_bytes"]
    config = load_config(None, {"model.base_model": model, "train.batch_size": int(batch),
                                "data.resolution": int(resolution),
                                "train.gradient_checkpointing": checkpointing == "1",
                                "train.mixed_precision": "no"})
    est = estimate_step(config)
    estimated = est.parts["activations"] + est.parts["workspace"] + est.parameters["lora"] * 4
    return {"case": case, "measured_step_bytes": measured, "estimated_step_bytes": estimated,
            "ratio": estimated / measured, "peak_bytes": est.peak_bytes, "parts": est.parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", help="model,resolution,batch,checkpointing (0/1)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model, resolution, batch, checkpointing = args.measure.split(",")
        print(json.dumps(measure(model, int(resolution), int(batch), checkpointing == "1")))
        return
    print("| case (model, px, batch, checkpointing) | measured step | estimated step | estimate / measured |")
    print("|---|---|---|---|")
    for case in args.case or CASES:
        r = run_case(case)
        print(f"| {case} | {r['measured_step_bytes'] / 2**20:.1f} MiB | {r['estimated_step_bytes'] / 2**20:.1f} "
              f"MiB | {r['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
