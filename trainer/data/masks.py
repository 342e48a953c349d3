"""Loss masks: which pixels of an image the loss counts (white = train, black = ignore, grey = partly).

    image, mask = open_with_mask(item, config.data)      # RGB image; "L" mask or None (1 everywhere)
    pixels, crop = prepare_image(image, w, h, ...)       # trainer/data/images.py
    weights = crop_mask(mask, w, h, crop)                # (h, w) in 0..1: the same resize and crop as the image
    latent_mask = to_latent_grid(weights, (h // 8, w // 8))   # (1, h/8, w/8): area-averaged

A mask is a file beside its image named `<stem>.mask.png` (`01.png`, `01.jpg` -> `01.mask.png`), read as
greyscale (colours by their brightness, transparent pixels as black), the same size as the image after
EXIF rotation (`data.masked_loss`, on by default: nobody draws a mask not to use it). Without a mask file,
`data.alpha_mask` uses the image's own alpha channel, as kohya's `alpha_mask` does (off by default: a
transparent background is usually meant to be trained on `data.background`). Mask files are never
training images (the scanner sets them aside and pairs them here).

The mask goes through the image's geometry: the same cover-resize (Lanczos, as the image), the same crop
box; a flipped example uses the mirrored mask. It is then area-averaged to the latent grid, so a latent
pixel's weight is the mean weight of the image pixels it encodes. Like kohya and OneTrainer, the mask
weights the squared error only: the VAE and the UNet (whose attention is global) still see the masked-out
pixels as context, so masked-out content can move the prediction elsewhere, but its own error is never
learned. The loss is the mask-weighted mean (trainer/loop.py `per_example_loss`), so a small mask does
not lower the learning rate (OneTrainer's `normalize_masked_area_loss`; kohya takes the plain mean).

Masks are read again each run, not cached: the latents do not depend on the mask (the VAE sees the
image's pixels whatever the mask says), so an edited mask re-encodes nothing and is never stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.images import cover_size, decode_image, has_alpha, to_rgb
from trainer.errors import DatasetError

MASK_SUFFIX = ".mask.png"
_MASK_FIX = "Re-export it as a greyscale PNG the size of its image (white = train, black = ignore), or delete it."


def is_mask_file(path: Path) -> bool:
    """Whether `path` is a loss mask (`*.mask.png`, any case) rather than a training image."""
    return path.name.lower().endswith(MASK_SUFFIX)


def pair_masks(items: list, masks: list[Path]) -> list[Path]:
    """Set each item's `mask_path` to the mask beside it (names compared ignoring case); the unpaired masks."""
    by_name = {(m.parent, m.name[:-len(MASK_SUFFIX)].lower()): m for m in masks}
    used: set[Path] = set()
    for item in items:
        mask = by_name.get((item.image_path.parent, item.image_path.stem.lower()))
        if mask is not None:
            item.mask_path = mask
            used.add(mask)
    return [m for m in masks if m not in used]


def read_mask(path: Path) -> Image.Image:
    """The mask file as an "L" image (EXIF rotation applied); DatasetError naming the file if unreadable."""
    try:
        image, _, _ = decode_image(path)
    except DatasetError as err:
        raise DatasetError(f"is not a readable mask: it {err.what}", where=str(path), fix=_MASK_FIX) from err
    return to_rgb(image, "#000000").convert("L")


def mask_for(item, data, raw: Image.Image) -> Image.Image | None:
    """The loss mask of `item` whose decoded image is `raw`, as `data` says; None means 1 everywhere."""
    if data.masked_loss and item.mask_path is not None:
        mask = read_mask(item.mask_path)
        if mask.size != raw.size:
            raise DatasetError(_size_mismatch(mask.size, raw.size, item.image_path), where=str(item.mask_path),
                               fix=_size_fix(raw.size))
        return mask
    if data.alpha_mask and has_alpha(raw):
        return raw.convert("RGBA").getchannel("A")
    return None


def open_with_mask(item, data) -> tuple[Image.Image, Image.Image | None]:
    """The item's image as RGB (on `data.background`) and its loss mask ("L", or None), decoded once."""
    raw, _, _ = decode_image(item.image_path)
    return to_rgb(raw, data.background), mask_for(item, data, raw)


def _size_mismatch(mask_size: tuple[int, int], image_size: tuple[int, int], image: Path) -> str:
    rotated = (" (width and height swapped: if the image is turned by its EXIF orientation, turn the mask the "
               "same way)") if mask_size == image_size[::-1] else ""
    return (f"is {mask_size[0]}x{mask_size[1]} but its image {image.name} is {image_size[0]}x{image_size[1]}, "
            f"so it cannot line up{rotated}")


def _size_fix(image_size: tuple[int, int]) -> str:
    return f"Save the mask at {image_size[0]}x{image_size[1]}, the size of its image, or delete it."


def crop_mask(mask: Image.Image | None, width: int, height: int, crop: tuple[int, int]):
    """The mask resized and cropped exactly as `prepare_image` does its image: (height, width) in 0..1, or None."""
    if mask is None:
        return None
    import torch

    image = mask.convert("F")
    new_size = cover_size(mask.size, width, height)
    if new_size != mask.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    top, left = crop
    image = image.crop((left, top, left + width, top + height))
    weights = np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0.0, 1.0)
    return torch.from_numpy(weights.copy())


def to_latent_grid(weights, latent_hw: tuple[int, int], device=None):
    """Pixel weights (H, W) area-averaged to the latent grid: (1, h, w) on `device`; None stays None."""
    if weights is None:
        return None
    import torch.nn.functional as F

    return F.interpolate(weights[None, None], size=tuple(latent_hw), mode="area")[0].to(device)


def flip_mask(mask):
    """The mask of the mirrored example (None stays None)."""
    return None if mask is None else mask.flip(-1)


def batch_mask(masks: list, latents_shape: tuple[int, ...], device=None):
    """The batch's mask (B, 1, h, w) on `device`, ones for examples without one; None when none has one."""
    if all(m is None for m in masks):
        return None
    import torch

    ones = torch.ones(1, *latents_shape[-2:], device=device)
    return torch.stack([ones if m is None else m.to(device) for m in masks])


@dataclass
class MaskCheck:
    """One doctor finding about an image's mask."""

    level: str
    code: str
    path: Path
    message: str
    fix: str


def check_mask(item, loaded, data) -> list[MaskCheck]:
    """What is wrong with `item`'s mask, if it has one (`loaded`: its image as `read_image` gave it)."""
    if not data.masked_loss or item.mask_path is None:
        return []
    try:
        mask = read_mask(item.mask_path)
    except DatasetError as err:
        return [MaskCheck("error", "bad-mask", item.mask_path, err.what, err.fix or _MASK_FIX)]
    if mask.size != loaded.image.size:
        return [MaskCheck("error", "mask-size", item.mask_path,
                          _size_mismatch(mask.size, loaded.image.size, item.image_path), _size_fix(loaded.image.size))]
    if mask.getextrema()[1] == 0:
        return [MaskCheck("warning", "black-mask", item.mask_path,
                          f"is black everywhere, so {item.image_path.name} trains nothing",
                          "Paint what should be learned white, or delete the mask to train the whole image.")]
    return []


def mask_summary(items: list, data) -> str:
    """The doctor's summary of loss masks: how many images have a mask file, and whether alpha is used."""
    files = sum(1 for i in items if i.mask_path is not None)
    parts = []
    if files:
        ignored = "" if data.masked_loss else ", ignored (data.masked_loss is off)"
        parts.append(f"{files} of {len(items)} images have a {MASK_SUFFIX}{ignored}")
    if data.alpha_mask:
        parts.append(f"alpha channels are masks where there is no {MASK_SUFFIX} (data.alpha_mask)")
    return "; ".join(parts) or "none"
