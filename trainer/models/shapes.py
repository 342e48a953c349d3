"""The drawing vocabulary the tiny base learns: procedural captioned pictures, the same from the same seed.

    scene = sample_scene(random.Random(3))            # one or two shapes, colours, positions, a background
    image, caption = render_scene(scene), caption_of(scene)
    pictures = list(make_pictures(seed=1, count=100))  # [(PIL image, caption, scene), ...], training split

Four shapes, twelve named colours, nine positions, two sizes, plain or textured (stripes, dots) backgrounds.
`HELD_OUT` names colour x shape pairs that the training split never draws (not even as the second object),
so a model trained on it can be judged on combinations it never saw. Pillow only; nothing is downloaded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 128
SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (220, 30, 30), "orange": (250, 130, 10), "yellow": (250, 230, 40), "green": (40, 170, 60),
    "blue": (30, 70, 220), "purple": (130, 40, 180), "pink": (250, 140, 200), "white": (245, 245, 245),
    "black": (20, 20, 20), "gray": (128, 128, 128), "brown": (120, 70, 30), "cyan": (30, 210, 220),
}
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0), "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
RADIUS = {"small": 15, "big": 25}
TEXTURES = ("plain", "stripes", "dots")
TEXTURE_PERIOD = 32
"""Pixels between stripes or dots: four latent cells."""
# Colour i is held out with shape i % 4: every colour and every shape is still seen, never these pairs.
HELD_OUT = frozenset((color, SHAPES[i % len(SHAPES)]) for i, color in enumerate(COLORS))
STAR_INNER = 0.4
"""A star's inner radius as a fraction of its outer one."""
MIN_CONTRAST = 140.0
"""An object's colour is at least this far (RGB distance) from its background's, so it stands out."""


@dataclass(frozen=True)
class Item:
    """One object of a picture."""

    shape: str
    color: str
    position: str
    size: str
    jitter: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Scene:
    """A whole picture: one or two objects on a plain or textured background."""

    items: tuple[Item, ...]
    background: str
    texture: str = "plain"


def color_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def contrasting(color: str) -> list[str]:
    """The background colours an object of `color` may stand on."""
    return [name for name, rgb in COLORS.items() if color_distance(rgb, COLORS[color]) >= MIN_CONTRAST]


def sample_scene(rng: random.Random, held_out: bool = False, two_objects: float = 0.3) -> Scene:
    """A random scene of the training split, or (`held_out`) of one held-out pair alone on a plain background."""
    if held_out:
        color, shape = rng.choice(sorted(HELD_OUT))
        item = Item(shape, color, rng.choice(list(POSITIONS)), "big", _jitter(rng))
        return Scene((item,), rng.choice(contrasting(color)), "plain")
    count = 2 if rng.random() < two_objects else 1
    positions = rng.sample(list(POSITIONS), count)
    items = []
    for position in positions:
        while True:
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            if (color, shape) not in HELD_OUT:
                break
        size = "small" if count == 2 else rng.choice(list(RADIUS))
        items.append(Item(shape, color, position, size, _jitter(rng)))
    backgrounds = set(COLORS)
    for item in items:
        backgrounds &= set(contrasting(item.color))
    background = rng.choice(sorted(backgrounds)) if backgrounds else "white" if items[0].color != "white" else "black"
    return Scene(tuple(items), background, rng.choice(TEXTURES))


def _jitter(rng: random.Random) -> tuple[int, int]:
    return rng.randint(-4, 4), rng.randint(-4, 4)


def center_of(item: Item, width: int = SIZE, height: int = SIZE) -> tuple[float, float]:
    """The object's centre in pixels: a 3 x 3 grid of positions, kept clear of the picture's edge."""
    column, row = POSITIONS[item.position]
    return (34 + column * (width - 68) / 2 + item.jitter[0], 34 + row * (height - 68) / 2 + item.jitter[1])


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """The polygon of a triangle or star (None for circle and square, which Pillow draws itself)."""
    if shape == "triangle":  # equilateral, pointing up, centred on its bounding box
        half = r * math.sqrt(3) / 2 * 1.15
        return [(cx, cy - r), (cx + half, cy + r * 0.75), (cx - half, cy + r * 0.75)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else r * STAR_INNER) * math.sin(i * math.pi / 5),
                 cy - (r if i % 2 == 0 else r * STAR_INNER) * math.cos(i * math.pi / 5)) for i in range(10)]
    return None


def render_scene(scene: Scene, width: int = SIZE, height: int = SIZE) -> Image.Image:
    """Draw `scene` (128 x 128 px unless told)."""
    base = COLORS[scene.background]
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    # Texture in a shade of the background (a quarter of the way to mid-gray), so objects still stand out.
    shade = tuple(int(c + (128 - c) * 0.25) if abs(sum(base) / 3 - 128) > 30 else c + 28 for c in base)
    # Drawn at the latent's scale (the VAE keeps 8 x 8 block means): finer stripes and dots alias into
    # patterns that look like noise, and a base trained on them leaves noisy backgrounds.
    if scene.texture == "stripes":
        for x in range(-height, width, TEXTURE_PERIOD):
            draw.line([(x, height), (x + height, 0)], fill=shade, width=TEXTURE_PERIOD // 3)
    elif scene.texture == "dots":
        r = TEXTURE_PERIOD // 5
        for row, y in enumerate(range(TEXTURE_PERIOD // 2, height, TEXTURE_PERIOD)):
            for x in range(TEXTURE_PERIOD // 4 + (row % 2) * TEXTURE_PERIOD // 2, width, TEXTURE_PERIOD):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    for item in scene.items:
        draw_item(draw, item, *center_of(item, width, height))
    return image


def draw_item(draw: ImageDraw.ImageDraw, item: Item, cx: float, cy: float, outline=None, width: int = 0) -> None:
    """One object centred on (cx, cy), optionally with an outline `width` px wide."""
    r = RADIUS[item.size]
    style = dict(fill=COLORS[item.color], outline=outline, width=width)
    points = shape_points(item.shape, cx, cy, r)
    if points is not None:
        draw.polygon(points, **style)
    elif item.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
    else:
        side = r * 0.88  # a square of about a circle's area
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), **style)


def caption_of(scene: Scene) -> str:
    """'a big red circle on a blue background, top left', or two objects each with its place."""
    backdrop = f"{_article(scene.background)} {scene.background} background"
    if scene.texture != "plain":
        backdrop += f" with {scene.texture}"
    if len(scene.items) == 1:
        item = scene.items[0]
        return f"{_article(item.size)} {item.size} {item.color} {item.shape} on {backdrop}, {item.position}"
    names = [f"{_article(i.color)} {i.color} {i.shape} at {i.position}" for i in scene.items]
    return f"{' and '.join(names)} on {backdrop}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_pictures(seed: int, count: int, held_out: bool = False) -> Iterator[tuple[Image.Image, str, Scene]]:
    """`count` pictures of the training split (or of the held-out pairs), the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        scene = sample_scene(rng, held_out=held_out)
        yield render_scene(scene), caption_of(scene), scene
