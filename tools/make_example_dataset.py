"""Draw the shipped example dataset: flat, bold-outlined 'stained glass' pictures with a caption each.

    python tools/make_example_dataset.py datasets/example

Deterministic (a fixed seed), so re-running it reproduces the committed files.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (214, 40, 40), "blue": (30, 90, 200), "yellow": (250, 200, 30), "green": (40, 160, 70),
          "purple": (130, 50, 170), "orange": (245, 130, 30), "teal": (20, 150, 150), "pink": (235, 100, 160)}
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = [(128, 128)] * 8 + [(192, 128), (128, 192), (160, 128), (128, 160)]
TRIGGER = "lsstyle"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    outline = dict(fill=fill, outline=(15, 15, 15), width=5)
    if shape == "circle":
        draw.ellipse(box, **outline)
    elif shape == "square":
        draw.rectangle(box, **outline)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], **outline)
    else:
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        import math
        points = [(cx + (r if i % 2 == 0 else r / 2.3) * math.sin(i * math.pi / 5),
                   cy - (r if i % 2 == 0 else r / 2.3) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, **outline)


def make_image(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    background_name = rng.choice(list(COLORS))
    width, height = size
    image = Image.new("RGB", size, tuple(min(255, c + 90) for c in COLORS[background_name]))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 32):  # the leading of the glass
        draw.line([(x, 0), (x + rng.randint(-12, 12), height)], fill=(15, 15, 15), width=3)
    names = []
    for _ in range(rng.randint(1, 2)):
        shape, color = rng.choice(SHAPES), rng.choice([c for c in COLORS if c != background_name])
        side = rng.randint(min(size) // 3, min(size) // 2)
        x0, y0 = rng.randint(4, width - side - 4), rng.randint(4, height - side - 4)
        draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), COLORS[color])
        names.append(f"{article(color)} {color} {shape}")
    draw.rectangle((0, 0, width - 1, height - 1), outline=(15, 15, 15), width=6)
    backdrop = f"{article(background_name)} {background_name} background"
    caption = f"{TRIGGER}, {' and '.join(names)} on {backdrop}, stained glass, bold outlines"
    return image, caption


def main(out_dir: str) -> None:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for index, size in enumerate(SIZES):
        image, caption = make_image(rng, size)
        image.save(folder / f"{index:02d}.png", optimize=True)
        (folder / f"{index:02d}.txt").write_text(caption + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "datasets/example")
