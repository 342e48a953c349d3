"""Seeded sample images during training, so step 100 and step 500 can be compared image for image.

    paths = render_samples(pipe, ["a cat, lsstyle"], out_dir=workdir / "samples" / "step-100")

The images come from the same code as the adapter pool's previews (`trainer.generate.render`), so a sample at
step N and a preview of the exported LoRA at strength 1 with the same seed are made the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.generate.render import render, save_png


@torch.no_grad()
def render_samples(pipe, prompts: list[str], out_dir: str | Path, negative_prompt: str = "", seed: int = 0,
                   steps: int = 20, guidance: float = 7.5, width: int = 512, height: int = 512) -> list[Path]:
    """Render one image per prompt (seed + its index) to `out_dir/NN.png`, leaving the global RNG alone."""
    out_dir = Path(out_dir)
    paths = []
    with torch.random.fork_rng(devices=[]):
        for index, prompt in enumerate(prompts):
            image = render(pipe, prompt, negative_prompt, seed=seed + index, steps=steps, guidance=guidance,
                           width=width, height=height)[0]
            paths.append(save_png(image, out_dir / f"{index:02d}.png"))
    return paths
