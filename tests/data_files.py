"""Makers of real image, caption and archive files (good and hostile) for the dataset tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random RGB image: no two seeds look alike, so no accidental near duplicates."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_image(path: Path, width: int = 160, height: int = 160, seed: int = 0, caption: str | None = None,
                fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(width, height, seed).save(path, format=fmt)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def truncated_png(path: Path) -> Path:
    """A real PNG cut in half (an interrupted download)."""
    write_image(path, 96, 96, seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def huge_png_header(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A PNG that declares 20000x20000 pixels (400 MP) in a few bytes: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 JPEG, left half red and right half blue, whose EXIF says 'rotate 90° clockwise' (6)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path
