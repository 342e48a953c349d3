"""The example dataset's style, a fixed sepia palette, and how far a picture is from it (numpy only).

    styled = to_sepia(np.asarray(picture))      # every pixel's luminance mapped onto the sepia ramp
    sepia_distance(image)                        # 0 for a sepia picture; about 110 for the base's colours

The ramp runs from dark brown through mid brown to cream; a pixel keeps only its luminance. The distance is
the mean RGB distance between a picture and its own sepia version: the style measure of bench/style_lora.py.
"""

from __future__ import annotations

import numpy as np

RAMP = np.array([(40, 20, 10), (150, 95, 50), (245, 225, 180)], dtype=np.float32)
"""Dark brown, mid brown, cream: luminance 0, 0.5 and 1 map onto these, linearly between them."""


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (..., 3) array, in its own units."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def to_sepia(pixels: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 array in the sepia palette (each pixel's luminance placed on the ramp)."""
    t = np.clip(luminance(pixels) / 255.0, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(t.astype(int), len(RAMP) - 2)
    frac = (t - low)[..., None]
    return (RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).round().astype(np.uint8)


def sepia_distance(image) -> float:
    """Mean RGB distance between a picture (PIL image or H x W x 3 array) and its sepia version."""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    return float(np.sqrt(((pixels - to_sepia(pixels).astype(np.float32)) ** 2).sum(-1)).mean())
