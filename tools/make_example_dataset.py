"""Draw the shipped example dataset: the base's shapes vocabulary in a 'stained glass' style it never saw.

    python tools/make_example_dataset.py datasets/example

The scenes are the pretraining vocabulary's (trainer.models.shapes: the same shapes, colours, positions and
captions), drawn with what the base never draws: thick black outlines around each object, black leading
across the background and a black frame. Captions are the vocabulary's with the trigger word in front.
Deterministic (a fixed seed), so re-running it reproduces the committed files.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.models.shapes import COLORS, Scene, caption_of, center_of, draw_item, sample_scene  # noqa: E402

SIZES = [(128, 128)] * 8 + [(192, 128), (128, 192), (160, 128), (128, 160)]
TRIGGER = "lsstyle"
INK = (15, 15, 15)
OUTLINE = 7
LEADING = 6
FRAME = 6


def styled_scene(rng: random.Random) -> Scene:
    """A plain-background scene of the vocabulary with no black in it (the style's ink is black)."""
    while True:
        scene = sample_scene(rng)
        if scene.background != "black" and all(item.color != "black" for item in scene.items):
            return Scene(scene.items, scene.background, "plain")


def draw_styled(scene: Scene, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    for x in range(28, width, 48):  # the leading between the panes
        draw.line([(x, 0), (x + random.Random(x).randint(-16, 16), height)], fill=INK, width=LEADING)
    for item in scene.items:
        draw_item(draw, item, *center_of(item, width, height), outline=INK, width=OUTLINE)
    draw.rectangle((0, 0, width - 1, height - 1), outline=INK, width=FRAME)
    return image


def main(out_dir: str) -> None:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for index, (width, height) in enumerate(SIZES):
        scene = styled_scene(rng)
        draw_styled(scene, width, height).save(folder / f"{index:02d}.png", optimize=True)
        caption = f"{TRIGGER}, {caption_of(scene)}, stained glass"
        (folder / f"{index:02d}.txt").write_text(caption + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "datasets/example")
