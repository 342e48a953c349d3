"""Does the tiny base draw what it is told? Colour and shape accuracy on held-out pairs, and VAE PSNR.

    python bench/tiny_quality.py                                      # the shipped `tiny` model
    python bench/tiny_quality.py --weights runs/pretrain/tiny-sd15.safetensors --grid out/held-out.png
    python bench/tiny_quality.py --base-model tiny-sdxl                  # the shipped SDXL one (its Euler sampler)

For every colour x shape pair that pretraining left out (trainer.models.shapes.HELD_OUT), a few prompts
("a big red circle on a blue background, top left") are generated at the default sampler settings
(trainer.generate.render: the pipeline's sampler, DDIM for SD 1.x and Euler for SDXL, 20 steps, guidance 7.5,
128 px) with seeds 0.., and judged by
trainer.models.judge. The same is done for as many seen pairs, for comparison. The VAE's reconstruction
PSNR is measured on held-out pictures. Targets (issue #15): colour >= 90 %, shape >= 70 %, PSNR >= 25 dB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.generate.render import render  # noqa: E402
from trainer.models.judge import judge  # noqa: E402
from trainer.models.shapes import COLORS, HELD_OUT, POSITIONS, SHAPES, contrasting, make_pictures  # noqa: E402


def load(args):
    from trainer.models.tiny import TINY_NAMES, build_tiny_pipeline, load_pretrained_weights, load_tiny_pipeline

    if args.weights:  # into the random model of --base-model's family
        pipe = load_pretrained_weights(build_tiny_pipeline(TINY_NAMES[args.base_model]), args.weights)
    else:
        pipe = load_tiny_pipeline(args.base_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompts_for(pairs, per_pair: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, colour, shape): each pair on a contrasting plain background at a random place."""
    rng = random.Random(seed)
    out = []
    for color, shape in sorted(pairs):
        for _ in range(per_pair):
            background, position = rng.choice(contrasting(color)), rng.choice(list(POSITIONS))
            out.append((f"a big {color} {shape} on a {background} background, {position}", color, shape))
    return out


def accuracy(pipe, prompts, seeds: int, grid: list | None = None, guidance: float = 7.5) -> dict:
    colour = shape = total = 0
    for prompt, want_color, want_shape in prompts:
        for seed in range(seeds):
            image = render(pipe, prompt, seed=seed, guidance=guidance)[0]
            verdict = judge(image)
            colour += verdict.color == want_color
            shape += verdict.shape == want_shape
            total += 1
            if grid is not None:
                grid.append(image)
    return {"images": total, "colour": colour / total, "shape": shape / total}


@torch.no_grad()
def vae_psnr(pipe, count: int) -> float:
    """Mean PSNR (dB, 8-bit) of encode -> decode on held-out pictures (latent mode, as img2img would)."""
    values = []
    for image, _, _ in make_pictures(777, count, held_out=True):
        x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = float(((recon - x) * 127.5).pow(2).mean())
        values.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
    return float(np.mean(values))


def save_grid(images, path: str, columns: int) -> None:
    from PIL import Image

    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (128 * columns, 128 * rows), (255, 255, 255))
    for i, image in enumerate(images):
        sheet.paste(image, (128 * (i % columns), 128 * (i // columns)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--weights", help="a file tools/pretrain_tiny.py wrote, instead of --base-model")
    parser.add_argument("--per-pair", type=int, default=2, help="prompts per pair")
    parser.add_argument("--seeds", type=int, default=4,
                        help="seeds per prompt (4: 96 held-out images; with 2, the shape figure moved +-7 points "
                             "with the seeds)")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="classifier-free guidance (7.5: the product default)")
    parser.add_argument("--psnr-pictures", type=int, default=48)
    parser.add_argument("--grid", help="write the held-out images as one PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load(args)
    grid: list | None = [] if args.grid else None
    seen = [(c, SHAPES[(i + 1) % len(SHAPES)]) for i, c in enumerate(COLORS)]  # one seen pair per colour
    result = {
        "held_out": accuracy(pipe, prompts_for(HELD_OUT, args.per_pair, 1), args.seeds, grid, args.guidance),
        "seen": accuracy(pipe, prompts_for(seen, args.per_pair, 2), args.seeds, guidance=args.guidance),
        "vae_psnr_db": vae_psnr(pipe, args.psnr_pictures),
    }
    if grid is not None:
        save_grid(grid, args.grid, columns=args.per_pair * args.seeds * 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
