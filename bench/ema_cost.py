"""What the EMA of the LoRA weights costs: one EMA update (`trainer/ema.LoraEMA.update`, the only work EMA adds to
a training step) for the UNet LoRA of real models, with the copy on the device and on the CPU, against a tiny
training step; and the size of the copy, which `train.ema_on_cpu` keeps out of accelerator memory.

    python bench/ema_cost.py [--rank 16] [--repeats 20] [--steps 20] [--resolution 64]

The LoRA tensors have the shapes peft gives the published SD 1.5 and SDXL UNets (built on the meta device from
their configs, as `lora-studio estimate` does; no download), filled with random values on this machine's device
(the CPU here, so "device" and "cpu" differ only by the host copy that `ema_on_cpu` makes). Medians of `--repeats`
updates. The tiny step is the median time between `progress` events of a `train()` run (loading excluded).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import load_config  # noqa: E402
from trainer.ema import LoraEMA  # noqa: E402
from trainer.events import Progress  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.network import add_lora, trainable_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny_step_time(args, out: Path) -> float:
    config = load_config(None, {"data.path": str(ROOT / "datasets" / "example"), "data.resolution": args.resolution,
                                "train.steps": args.steps, "network.rank": args.rank, "train.log_with": "none",
                                "export.output_dir": str(out)})
    stamps = []
    train(config, on_event=lambda e: stamps.append(time.perf_counter()) if isinstance(e, Progress) else None)
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def lora_shapes(family: str, rank: int) -> list[torch.Size]:
    """The UNet LoRA parameter shapes of the published `family` base at `rank` (meta device, no weights)."""
    from trainer.estimate.build import build_meta, model_spec

    network = load_config(None, {"network.rank": rank}).network
    spec = model_spec(load_config(None).model, family)
    base = SimpleNamespace(pipe=SimpleNamespace(**build_meta(spec)), family=spec.family)
    add_lora(base, network)
    return [p.shape for p in trainable_parameters(base, network)["unet"]]


def update_time(shapes: list[torch.Size], on_cpu: bool, repeats: int) -> float:
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    ema = LoraEMA([str(i) for i in range(len(params))], params, 0.999, on_cpu)
    times = []
    for _ in range(repeats):
        with torch.no_grad():
            for p in params:
                p.add_(1e-3)
        start = time.perf_counter()
        ema.update()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, rank {args.rank}")
    for family in ("sd15", "sdxl"):
        shapes = lora_shapes(family, args.rank)
        size = sum(math.prod(s) for s in shapes) * 4
        device, cpu = (update_time(shapes, on_cpu, args.repeats) * 1000 for on_cpu in (False, True))
        print(f"{family}: EMA copy {size / 2**20:.1f} MiB ({len(shapes)} tensors); one update {device:.1f} ms on the "
              f"device, {cpu:.1f} ms with ema_on_cpu")
    with tempfile.TemporaryDirectory() as tmp:
        step = tiny_step_time(args, Path(tmp)) * 1000
        print(f"tiny training step ({args.resolution} px, rank {args.rank}): {step:.1f} ms")


if __name__ == "__main__":
    main()
