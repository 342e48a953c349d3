"""A deterministic judge of one-object pictures: which named colour and which shape it shows (numpy only).

    verdict = judge(image)      # Verdict(color='red', shape='star', fill=0.36, solidity=0.55, ...)

The background is the median colour of the picture's border; the object is the largest connected region of
pixels far from it. Its colour is the named colour (trainer.models.shapes.COLORS) nearest to the region's
median; its shape comes from two contour measures: solidity (area / convex-hull area: a star's is about 0.6,
a convex shape's about 1) and fill ratio (area / bounding-box area: square 1, circle 0.79, triangle 0.5).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from trainer.models.shapes import COLORS

OBJECT_DISTANCE = 70.0
"""A pixel belongs to the object when it is this far (RGB) from the background: above texture shades."""
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[name] for name in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Verdict:
    """What the judge saw; `shape`/`color` are None when no object stands out of the background."""

    color: str | None
    shape: str | None
    background: str
    fill: float = 0.0
    solidity: float = 0.0
    area: int = 0


def nearest_color(rgb) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


def judge(image) -> Verdict:
    """Judge a PIL image (or an H x W x 3 uint8 array) holding one object on a background."""
    pixels = _pixels(image)
    background, region = object_region(pixels)
    area = int(region.sum())
    if area < 30:
        return Verdict(None, None, nearest_color(background))
    color = nearest_color(np.median(pixels[region], axis=0))
    fill, solidity = shape_measures(region)
    return Verdict(color, classify_shape(fill, solidity), nearest_color(background), fill, solidity, area)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)


def object_region(image) -> tuple[np.ndarray, np.ndarray]:
    """(background colour, boolean mask of the object): the border's median colour, and the largest connected
    region of pixels far from it."""
    pixels = _pixels(image)
    border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3),
                             pixels[:, :3].reshape(-1, 3), pixels[:, -3:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    return background, largest_component(np.sqrt(((pixels - background) ** 2).sum(-1)) > OBJECT_DISTANCE)


def classify_shape(fill: float, solidity: float) -> str:
    """Stars are the only concave shape; among convex ones the fill ratio separates the rest."""
    if solidity < 0.8:
        return "star"
    if fill >= 0.88:
        return "square"
    if fill >= 0.66:
        return "circle"
    return "triangle"


def shape_measures(region: np.ndarray) -> tuple[float, float]:
    """(fill ratio, solidity) of a boolean region."""
    ys, xs = np.nonzero(region)
    area = float(len(xs))
    box = float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    # Pixel corners, so the hull of a filled square covers its pixels whole.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = convex_hull(np.unique(corners, axis=0).astype(np.float64))
    return area / box, min(1.0, area / max(polygon_area(hull), 1.0))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain over (x, y) points sorted by x then y."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    pts = [tuple(p) for p in points[order]]

    def half(sequence):
        chain: list[tuple[float, float]] = []
        for p in sequence:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (a breadth-first fill; numpy has no labelling)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(members) > len(best):
            best = members
    region = np.zeros_like(mask)
    if best:
        rows, cols = zip(*best, strict=True)
        region[list(rows), list(cols)] = True
    return region
