"""Does a LoRA visibly learn a style? The example dataset's LoRA at strengths 0, 0.5 and 1 on the tiny base.

    python bench/style_lora.py                                   # trains the README's quick run first
    python bench/style_lora.py --lora runs/shapes/shapes.safetensors --grid docs/strength-grid.png

The style measure is the distance to the sepia palette (trainer.models.palette.sepia_distance): the example
dataset (tools/make_example_dataset.py) draws the base's vocabulary in sepia, which the base never draws. The
dataset's own value is measured on its pictures as the VAE reconstructs them (the most any model on this VAE
can draw). Reported: the measure at each strength, how far strength 1 moved from the base's value towards the
dataset's (issue #15's target: at least half of the way), and whether the subject stays: the object region of
the image at strength 1 overlaps the base image's (intersection over union, and how many reach 0.5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.models.judge import object_region  # noqa: E402
from trainer.models.palette import sepia_distance  # noqa: E402

EXAMPLE = ROOT / "datasets" / "example"
PROMPTS = ["a big red circle on a yellow background, center, sepia, lsstyle",
           "a big blue square on a white background, top left, sepia, lsstyle",
           "a big green star on a pink background, bottom right, sepia, lsstyle"]
QUICK_RUN = ["--data", str(EXAMPLE), "--steps", "300", "--save-every", "100", "--rank", "8", "--alpha", "8",
             "--lr", "1e-3", "--name", "shapes"]
"""The README's quick training run (its output folder is added)."""


def train_quick_run(out: Path, extra: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "trainer.cli", "train", *QUICK_RUN, *extra, "--output", str(out)],
                   check=True, cwd=ROOT)
    return out / "shapes.safetensors"


@torch.no_grad()
def dataset_style(vae) -> float:
    """The style measure of the example pictures after an encode -> decode round trip."""
    values = []
    for path in sorted(EXAMPLE.glob("*.png")):
        array = np.asarray(Image.open(path).convert("RGB"), np.float32)
        x = torch.from_numpy(array).permute(2, 0, 1)[None] / 127.5 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        values.append(sepia_distance(((recon[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()))
    return float(np.mean(values))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two object masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def measure(pool, name: str, prompts: list[str], seeds: int, strengths=(0.0, 0.5, 1.0)) -> dict:
    style = {s: [] for s in strengths}
    overlaps = []
    for prompt in prompts:
        for seed in range(seeds):
            images = {s: pool.generate(prompt, seed=seed, strengths={name: s} if s else {})[0] for s in strengths}
            for s, image in images.items():
                style[s].append(sepia_distance(image))
            overlaps.append(overlap(object_region(images[0.0])[1], object_region(images[strengths[-1]])[1]))
    return {"sepia_distance": {str(s): float(np.mean(v)) for s, v in style.items()},
            "subject_overlap": float(np.mean(overlaps)),
            "subject_kept": sum(o >= 0.5 for o in overlaps) / len(overlaps)}


def moved_at_strength_1(distances: dict[str, float]) -> float:
    """How far strength 1 moved the measure from the base's value (strength 0) towards the dataset's: 0 to 1."""
    base, target = distances["0.0"], distances["dataset"]
    return (distances["1.0"] - base) / (target - base) if target != base else 0.0


def main(argv: list[str] | None = None) -> dict:
    from trainer.generate.pool import AdapterPool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", help="a trained LoRA; without it the README's quick run is trained first")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--grid", help="write a strength grid (0, 0.5, 1) of the prompts here")
    parser.add_argument("--train-args", default="", help="extra flags for the quick run, e.g. '--lr 3e-4'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        lora = Path(args.lora) if args.lora else train_quick_run(Path(scratch) / "run", args.train_args.split())
        pool = AdapterPool(args.base_model, device="cpu")
        pool.load("shapes", lora)
        result = measure(pool, "shapes", PROMPTS, args.seeds)
        result["sepia_distance"]["dataset"] = dataset_style(pool.pipe.vae)
        result["moved_at_strength_1"] = moved_at_strength_1(result["sepia_distance"])
        if args.grid:
            grid = pool.grid(PROMPTS, strengths=(0.0, 0.5, 1.0), seed=0, loras=["shapes"])
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            grid.save(args.grid)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
