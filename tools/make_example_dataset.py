"""Draw the shipped example dataset: the base's shapes vocabulary in a sepia palette it never saw.

    python tools/make_example_dataset.py datasets/example

The scenes are the pretraining vocabulary's (trainer.models.shapes: the same shapes, colours, positions and
captions, plain backgrounds), drawn in a fixed palette (trainer.models.palette: every pixel's luminance on a
dark-brown-to-cream ramp). Objects differ from their background in luminance, not only in hue, so they still
stand out in sepia. Captions are the vocabulary's with the style and the trigger word after them: the tiny
base's frozen text encoder reads words by position, so a trigger in front shifts every word of a caption it
learned and the base no longer draws what the rest of the prompt says.
Deterministic (a fixed seed), so re-running it reproduces the committed files.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.models.palette import luminance, to_sepia  # noqa: E402
from trainer.models.shapes import COLORS, Scene, caption_of, render_scene, sample_scene  # noqa: E402

SIZES = [(128, 128)] * 8 + [(192, 128), (128, 192), (160, 128), (128, 160)]
TRIGGER = "lsstyle"
MIN_LUMINANCE_CONTRAST = 90.0


def styled_scene(rng: random.Random) -> Scene:
    """A plain-background scene of the vocabulary whose objects differ from the background in luminance."""
    while True:
        scene = sample_scene(rng)
        back = luminance(COLORS[scene.background])
        if all(abs(luminance(COLORS[item.color]) - back) > MIN_LUMINANCE_CONTRAST for item in scene.items):
            return Scene(scene.items, scene.background, "plain")


def main(out_dir: str) -> None:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for index, (width, height) in enumerate(SIZES):
        scene = styled_scene(rng)
        picture = Image.fromarray(to_sepia(np.asarray(render_scene(scene, width, height))))
        picture.save(folder / f"{index:02d}.png", optimize=True)
        (folder / f"{index:02d}.txt").write_text(f"{caption_of(scene)}, sepia, {TRIGGER}\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "datasets/example")
