"""Seeded image generation with a diffusers pipeline: the one code path for previews, grids and samples.

    images = render(pipe, "a cat", seed=7, steps=20, guidance=7.5, width=128, height=128)

Every image is seeded (a CPU generator: a seed gives the same noise on any device), so images from step 100
and step 500, or at strength 0.4 and 1.0, can be compared.
"""

from __future__ import annotations

from pathlib import Path

import torch


def render(pipe, prompt: str, negative_prompt: str = "", seed: int = 0, steps: int = 20,
           guidance: float = 7.5, width: int | None = None, height: int | None = None, num_images: int = 1,
           output_type: str = "pil") -> list:
    """Run `pipe` once; a list of PIL images (or float arrays with `output_type="np"`)."""
    size = default_size(pipe)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    result = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        width=int(width or size),
        height=int(height or size),
        num_images_per_prompt=int(num_images),
        generator=generator,
        output_type=output_type,
    )
    return list(result.images)


def default_size(pipe) -> int:
    """The pipeline's native resolution: the UNet's sample size times the VAE's downsampling."""
    factor = getattr(pipe, "vae_scale_factor", 8)
    return int(pipe.unet.config.sample_size) * int(factor)


def save_png(image, path: str | Path) -> Path:
    """Write a PIL image as PNG atomically (a half-written preview is never shown)."""
    from trainer.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
