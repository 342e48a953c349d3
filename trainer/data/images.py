"""Open an image safely and turn it into a training tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor, ImageOps

from trainer.errors import DatasetError


def open_image(path: str | Path, background: str = "#ffffff") -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise DatasetError(f"is not a readable image ({err})", where=str(path),
                           fix="Re-export it as PNG, JPEG or WebP, or remove it.") from err
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, ImageColor.getrgb(background))
        image = Image.alpha_composite(canvas, image)
    return image.convert("RGB")


def prepare_image(image: Image.Image, width: int, height: int, random_crop: bool = False,
                  rng: np.random.Generator | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to cover (width, height), crop, and return a CHW tensor in [-1, 1] and the crop's top-left."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    spare_x, spare_y = resized.width - width, resized.height - height
    if random_crop and rng is not None:
        left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
    else:
        left, top = spare_x // 2, spare_y // 2
    cropped = resized.crop((left, top, left + width, top + height))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), (top, left)
