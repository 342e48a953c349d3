"""What prior preservation's generated class images cost: drawing them once, and a later run's cache hit.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/prior_cost.py

8 class images at 20 steps from the tiny base (LoRA attached, as in a run) at 64 and 128 px, then the same call
again (the manifest check with the model's weight identity, no drawing). Figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from trainer.config import load_config
from trainer.models import load_base
from trainer.network import add_lora
from trainer.prior import ensure_generated


def measure(model: str, resolution: int, out: Path, count: int = 8, steps: int = 20) -> str:
    config = load_config(None, {"model.base_model": model, "data.resolution": resolution, "data.class_steps": steps,
                                "data.class_prompt": "a photo of a cat", "data.num_class_images": count})
    base = load_base(config.model)
    add_lora(base, config.network)
    folder = out / f"{model}-{resolution}"
    start = time.perf_counter()
    made = ensure_generated(base, config, folder, resolution)
    draw = time.perf_counter() - start
    start = time.perf_counter()
    again = ensure_generated(base, config, folder, resolution)
    hit = time.perf_counter() - start
    return (f"{model} {resolution}px: drew {made} images x {steps} steps in {draw:.2f} s ({draw / made:.3f} s each); "
            f"cache hit ({again} drawn) {hit * 1000:.0f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="prior-bench-") as folder:
        for model, resolution in (("tiny", 64), ("tiny", 128)):
            print(measure(model, resolution, Path(folder)))
