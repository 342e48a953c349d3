"""Seeded sample images during training, so step 100 and step 500 can be compared image for image.

    paths = render_samples(pipe, ["a cat, lsstyle"], out_dir=workdir / "samples" / "step-100")
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.fileio import atomic_path


@torch.no_grad()
def render_samples(pipe, prompts: list[str], out_dir: str | Path, negative_prompt: str = "", seed: int = 0,
                   steps: int = 20, guidance: float = 7.5, width: int = 512, height: int = 512) -> list[Path]:
    """Render one image per prompt with a fixed seed each, without touching the global RNG."""
    out_dir = Path(out_dir)
    paths = []
    with torch.random.fork_rng(devices=[]):
        for index, prompt in enumerate(prompts):
            generator = torch.Generator(device="cpu").manual_seed(seed + index)
            image = pipe(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                         guidance_scale=guidance, width=width, height=height, generator=generator).images[0]
            path = out_dir / f"{index:02d}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            paths.append(path)
    return paths
