"""Measure the shape judge's centroids (trainer/models/judge.py) on the tiny base's VAE reconstructions.

    python tools/fit_judge.py            # prints SHAPE_CENTROIDS / MOMENT_SPREAD and the judge's accuracy
    python tools/fit_judge.py --check    # exits 1 when judge.py's constants are not what this measures

A generated picture reaches the judge through the VAE's decoder, in 8 x 8-pixel blocks, so the centroids are
measured on what the VAE makes of training pictures (one big object on a plain background, as
bench/tiny_quality.py asks for), never on generated pictures or held-out pairs. The accuracy is then reported
on the generator's own pictures and on reconstructions of training and held-out pictures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.models import judge  # noqa: E402
from trainer.models.shapes import make_pictures  # noqa: E402

FIT_SEED, FIT_PICTURES = 5, 1200
"""Training-split pictures drawn for the fit; 152 of them hold one big object on a plain background."""
HELD_OUT_SEED, HELD_OUT_PICTURES = 777, 200


@torch.no_grad()
def reconstruct(vae, image) -> np.ndarray:
    """encode -> decode (the latent's mode), as 8-bit pixels."""
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    out = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    return ((out[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


def big_object_pictures(seed: int, count: int, held_out: bool = False):
    """(image, shape, colour) of the pictures among `count` that hold one big object on a plain background."""
    for image, _, scene in make_pictures(seed, count, held_out=held_out):
        if len(scene.items) == 1 and scene.items[0].size == "big" and scene.texture == "plain":
            yield image, scene.items[0].shape, scene.items[0].color


def moment_samples(vae, pictures) -> list[tuple[str, np.ndarray]]:
    samples = []
    for image, shape, _ in pictures:
        region = judge.object_region(reconstruct(vae, image))[1]
        samples.append((shape, judge.angular_moments(region)))
    return samples


def accuracy(pictures, vae=None) -> tuple[float, float]:
    """(colour, shape) accuracy of the judge on `pictures`, or on their reconstructions through `vae`."""
    colour = shape = total = 0
    for image, want_shape, want_colour in pictures:
        verdict = judge.judge(reconstruct(vae, image) if vae is not None else image)
        colour += verdict.color == want_colour
        shape += verdict.shape == want_shape
        total += 1
    return colour / total, shape / total


def drift(centroids: dict, spread: np.ndarray) -> float:
    """The largest difference between a measured constant and judge.py's."""
    gaps = [np.abs(centroids[name] - judge.SHAPE_CENTROIDS[name]).max() for name in judge.SHAPE_CENTROIDS]
    return float(max(*gaps, np.abs(spread - judge.MOMENT_SPREAD).max()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when judge.py's constants differ from the fit")
    args = parser.parse_args(argv)
    from trainer.models.tiny import load_tiny_pipeline

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    vae = load_tiny_pipeline("tiny").vae
    train = list(big_object_pictures(FIT_SEED, FIT_PICTURES))
    centroids, spread = judge.fit_centroids(moment_samples(vae, train))
    print(f"fitted on {len(train)} reconstructed training pictures:")
    for name, centroid in centroids.items():
        print(f'    "{name}": np.array([{", ".join(f"{v:.3f}" for v in centroid)}]),')
    print(f'MOMENT_SPREAD = np.array([{", ".join(f"{v:.3f}" for v in spread)}])')
    held = list(big_object_pictures(HELD_OUT_SEED, HELD_OUT_PICTURES, held_out=True))
    for name, pictures, through in (("training pictures", train, None), ("held-out pictures", held, None),
                                    ("training reconstructions", train, vae), ("held-out reconstructions", held, vae)):
        colour, shape = accuracy(pictures, through)
        print(f"{name} ({len(pictures)}): colour {colour:.1%}, shape {shape:.1%}")
    gap = drift(centroids, spread)
    if args.check and gap > 0.0015:  # the constants are rounded to 3 decimals
        print(f"judge.py's constants differ from the fit by {gap:.4f}: paste the lines above into it")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
