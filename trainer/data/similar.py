"""Near-duplicate images: a difference hash (dHash) plus a tiny colour thumbnail, made with Pillow.

    signature = image_signature(image)
    pairs = near_duplicates({"a.png": sig_a, "b.png": sig_b})     # [("a.png", "b.png", 3)]

No image-hash library is needed for this (and none is a dependency): dHash is a 9x8 grayscale resize
and 64 comparisons. dHash alone calls every flat image a duplicate of every other (all gradients are
zero), so a pair must also have close average colours (a 4x4 RGB thumbnail).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_DISTANCE = 10
"""Most differing dHash bits (of 64) for two images to count as near duplicates."""
COLOUR_DISTANCE = 16.0
"""Largest mean difference (0..255) of the 4x4 colour thumbnails for near duplicates."""


@dataclass(frozen=True)
class Signature:
    dhash: int
    thumbnail: tuple[int, ...]


def image_signature(image: Image.Image) -> Signature:
    """The dHash (horizontal gradients of a 9x8 grayscale) and a 4x4 RGB thumbnail of `image`."""
    gray = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    thumb = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), dtype=np.uint8)
    return Signature(dhash=value, thumbnail=tuple(int(v) for v in thumb.flatten()))


def distance(a: Signature, b: Signature) -> int:
    """The number of dHash bits that differ."""
    return (a.dhash ^ b.dhash).bit_count()


def colour_distance(a: Signature, b: Signature) -> float:
    return float(np.abs(np.array(a.thumbnail, dtype=np.int16) - np.array(b.thumbnail, dtype=np.int16)).mean())


def near_duplicates(signatures: dict[Hashable, Signature]) -> list[tuple[Hashable, Hashable, int]]:
    """Pairs (first, second, bits apart) of near-duplicate images, in input order.

    Every pair is compared, one row of XORs at a time in numpy, which stays well under a second for
    the few thousand images a LoRA dataset has.
    """
    keys = list(signatures)
    hashes = np.array([signatures[k].dhash for k in keys], dtype=np.uint64)
    found: list[tuple[Hashable, Hashable, int]] = []
    for i in range(len(keys) - 1):
        xor = (hashes[i + 1:] ^ hashes[i]).view(np.uint8).reshape(-1, 8)
        bits = _POPCOUNT[xor].sum(axis=1)
        for offset in np.flatnonzero(bits <= HASH_DISTANCE):
            j = i + 1 + int(offset)
            if colour_distance(signatures[keys[i]], signatures[keys[j]]) <= COLOUR_DISTANCE:
                found.append((keys[i], keys[j], int(bits[offset])))
    return found


_POPCOUNT = np.array([bin(n).count("1") for n in range(256)], dtype=np.int64)
