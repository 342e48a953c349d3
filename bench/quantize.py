"""What a 4-bit base (`model.quantize = "nf4"`) saves and costs, against the full-precision base.

    python bench/quantize.py                 # tiny and tiny-sdxl, 100 steps each way: the table in RESULTS.md
    python bench/quantize.py --steps 20      # quicker

For each model the same run (the example dataset at 64 px, a quarter held out for validation, seed 0) trains
once on the float32 base and once on the nf4 base, each in a fresh subprocess (one torch thread), in turn.
Reported: the UNet's weight bytes as stored (4-bit packs and their scales counted as packed), the process's
peak resident memory (VmHWM), the mean training loss of the last quarter of the steps, and the final
validation loss (fixed timesteps and noise, so the two runs score the same examples the same way).
The SD 1.5 and SDXL lines are computed from the published UNet configs (linear layers in 4 bits plus one
float32 scale per 64 weights, the rest in bf16), not measured: no GPU was at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(model: str, quantize: str, steps: int) -> dict:
    """One training run in this process; its figures as a dict."""
    from trainer.config import load_config
    from trainer.loop import train
    from trainer.precision import pin_threads

    pin_threads(1)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(None, {
            "model.base_model": model, "model.quantize": quantize, "data.path": str(ROOT / "datasets/example"),
            "data.resolution": 64, "data.validation_fraction": 0.25, "train.validate_every": steps,
            "train.steps": steps, "train.seed": 0, "optim.learning_rate": 1e-3, "export.output_dir": out})
        events = []
        result = train(config, on_event=events.append)
    validation = [e.loss for e in events if type(e).__name__ == "Validation"]
    tail = result.losses[-max(1, steps // 4):]
    return {"model": model, "quantize": quantize, "unet_weight_bytes": _unet_bytes(model, quantize),
            "peak_rss_bytes": _status("VmHWM"), "train_loss_tail": sum(tail) / len(tail),
            "validation_loss": validation[-1] if validation else None}


def _unet_bytes(model: str, quantize: str) -> int:
    import torch

    from trainer.config import ModelConfig
    from trainer.models import load_base
    from trainer.models.quantize import quantize_unet, weight_bytes

    base = load_base(ModelConfig(base_model=model))
    quantize_unet(base, quantize, torch.float32)
    base.pipe.unet.to("cpu")
    return weight_bytes(base.pipe.unet)


def published_bytes(family: str) -> tuple[int, int]:
    """(bf16 bytes, nf4 bytes) of the published UNet of `family`, counted on the meta device."""
    import torch

    from trainer.config import ModelConfig
    from trainer.estimate.build import build_meta, model_spec

    unet = build_meta(model_spec(ModelConfig(), family))["unet"]
    total = sum(p.numel() for p in unet.parameters())
    linear = sum(m.weight.numel() for m in unet.modules() if type(m) is torch.nn.Linear)
    return total * 2, (total - linear) * 2 + linear // 2 + (linear // 64) * 4


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _run(model: str, quantize: str, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--measure", f"{model},{quantize}", "--steps", str(steps)],
                         env=env, capture_output=True, text=True, timeout=3600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--models", default="tiny,tiny-sdxl")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model, quantize = args.measure.split(",")
        print(json.dumps(measure(model, quantize, args.steps)))
        return
    mib = 2**20
    print(f"| model | base | UNet weights | peak RSS | train loss (last {args.steps // 4} steps) | validation loss |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        rows = {q: _run(model, q, args.steps) for q in ("none", "nf4")}
        for q, r in rows.items():
            print(f"| {model} | {'float32' if q == 'none' else 'nf4'} | {r['unet_weight_bytes'] / mib:.1f} MiB | "
                  f"{r['peak_rss_bytes'] / mib:.0f} MiB | {r['train_loss_tail']:.4f} | {r['validation_loss']:.4f} |",
                  flush=True)
    for family in ("sd15", "sdxl"):
        full, packed = published_bytes(family)
        print(f"| {family} (published config, computed) | bf16 → nf4 | {full / 2**30:.2f} → {packed / 2**30:.2f} GiB "
              f"| not measured | not measured | not measured |")


if __name__ == "__main__":
    main()
