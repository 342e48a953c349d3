"""Open training images safely and turn them into tensors of one bucket's size.

    image = open_image("cats/01.jpg", background="#ffffff")     # RGB, EXIF rotation applied
    pixels, (top, left) = prepare_image(image, 512, 384, random_crop=False, rng=random.Random(0))

Only PNG, JPEG and WebP are accepted, judged by the file's first bytes rather than its name. Pillow's
decompression-bomb limit stays on and its warning counts as an error; animated files are refused.
Every refusal is a DatasetError that names the file and what to do about it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from trainer.errors import DatasetError

if TYPE_CHECKING:
    import torch

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# Extensions people put in datasets that we refuse by name instead of ignoring silently.
OTHER_IMAGE_EXTENSIONS = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".psd", ".jfif")
# Pillow's own default, kept even if something in the process turned Pillow's global check off.
MAX_PIXELS = 89_478_485
_FIX_CONVERT = "Convert it to PNG, JPEG or WebP, or remove it from the dataset."
_EXIF_ORIENTATION = 0x0112
Rng = Any
"""random.Random, numpy's Generator or torch's Generator (torch is imported only when tensors are made)."""


@dataclass
class LoadedImage:
    """An image opened by `read_image`: the RGB pixels and what the doctor wants to know about the file."""

    image: Image.Image
    format: str
    sha256: str
    mode: str
    """The file's own pixel mode before conversion (for example CMYK, I;16, P, RGBA)."""


def sniff_format(head: bytes) -> str:
    """The file type from its first bytes: PNG, JPEG, WEBP, or a name for what it is instead."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        return head[8:12].decode("ascii", "replace").strip().upper() or "ISO media"
    if head[:4] == b"8BPS":
        return "PSD"
    if not head:
        return "empty file"
    if all(32 <= b < 127 or b in b"\r\n\t" for b in head):
        return "text"
    return "unknown"


def read_image(path: str | Path, background: str = "#ffffff") -> LoadedImage:
    """Open, fully decode and convert one image to RGB; raise DatasetError naming the file and the fix."""
    image, kind, data = decode_image(path)
    return LoadedImage(image=to_rgb(image, background), format=kind,
                       sha256=hashlib.sha256(data).hexdigest(), mode=image.mode)


def decode_image(path: str | Path) -> tuple[Image.Image, str, bytes]:
    """(image in its own mode, EXIF rotation applied; its format; the file's bytes), checked as `read_image` says.

    The image keeps its alpha channel (the loss masks of trainer/data/masks.py read it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot be read ({err.strerror or err})", where=str(path),
                           fix="Check that the file exists and is readable.") from err
    kind = sniff_format(data[:16])
    if kind not in SUPPORTED_FORMATS:
        raise DatasetError(f"is not a PNG, JPEG or WebP image (its content is {kind})", where=str(path),
                           fix=_FIX_CONVERT)
    return _apply_exif_orientation(_decode(path, data, kind)), kind, data


def open_image(path: str | Path, background: str = "#ffffff") -> Image.Image:
    """The image at `path` as RGB (see `read_image`)."""
    return read_image(path, background).image


def _decode(path: Path, data: bytes, kind: str) -> Image.Image:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height} pixels")
            if getattr(image, "n_frames", 1) > 1:
                raise DatasetError(f"is animated ({image.n_frames} frames); only still images can be trained",
                                   where=str(path), fix="Export one frame as PNG or JPEG.")
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DatasetError(
                f"is too large to open safely ({err}); Pillow's decompression-bomb limit is "
                f"{MAX_PIXELS:,} pixels", where=str(path),
                fix="Downscale it (for example to 2048 px on the long side) or remove it.") from err
        except UnidentifiedImageError as err:
            raise DatasetError(f"is not a readable {kind} image", where=str(path), fix=_FIX_CONVERT) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            reason = f"truncated {kind}" if "truncat" in str(err).lower() else f"damaged {kind}: {err}"
            raise DatasetError(f"is not a readable image ({reason})", where=str(path),
                               fix="Re-export it or remove it.") from err
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not refuse otherwise good pixels
        return image


def to_rgb(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Any still image as RGB: alpha composited on `background`; CMYK, 16-bit and palette converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's own I -> L conversion clips 16-bit values at 255 (a white image); scale instead.
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(scaled, mode="L")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, parse_colour(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    """Whether the image has transparency: an alpha channel, or a transparent palette entry or colour."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def parse_colour(colour: str) -> tuple[int, int, int]:
    """'#ffffff', 'white' or 'rgb(1,2,3)' as an RGB tuple; a bad value names the setting to fix."""
    try:
        return ImageColor.getrgb(colour)[:3]
    except ValueError as err:
        raise DatasetError(f"is not a colour: {colour!r}", where="data.background",
                           fix="Use a value like '#ffffff' or 'white'.") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as trained, after EXIF rotation, read from the header without decoding pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(f"is not a readable image ({err})", where=str(path),
                               fix="Run `lora-studio doctor` on the dataset to see every bad file.") from err
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def prepare_image(image: Image.Image, width: int, height: int, random_crop: bool = False,
                  rng: Rng = None, flip: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize `image` to cover width x height, crop (centre or random): (CHW in [-1, 1], (top, left)).

    `rng` (random.Random, numpy Generator or torch Generator) picks a random crop; without one the crop
    is centred. `flip` mirrors the crop (the caller draws it, so it can key a cache on it).
    """
    new_w, new_h = cover_size(image.size, width, height)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if random_crop and rng is not None:
        top, left = _randint(rng, new_h - height), _randint(rng, new_w - width)
    else:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    image = image.crop((left, top, left + width, top + height))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), (top, left)


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The (width, height) an image of `size` is resized to so that it covers width x height (then cropped)."""
    src_w, src_h = size
    scale = max(width / src_w, height / src_h)
    return max(width, round(src_w * scale)), max(height, round(src_h * scale))


def _randint(rng: Rng, high: int) -> int:
    """A number in 0..high from whichever kind of seeded generator the caller holds."""
    import torch

    if high <= 0:
        return 0
    if isinstance(rng, torch.Generator):
        return int(torch.randint(0, high + 1, (1,), generator=rng).item())
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, high + 1))
    return rng.randint(0, high)
