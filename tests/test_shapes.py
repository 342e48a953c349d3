"""The shapes vocabulary and its judge: deterministic pictures, held-out pairs, a judge that reads them right."""

import random
import subprocess
import sys

import numpy as np

from trainer.models.judge import judge
from trainer.models.shapes import COLORS, HELD_OUT, SHAPES, make_pictures, render_scene, sample_scene


def test_pictures_are_the_same_from_the_same_seed_and_differ_across_seeds():
    first = [(np.asarray(image).tobytes(), caption) for image, caption, _ in make_pictures(4, 12)]
    again = [(np.asarray(image).tobytes(), caption) for image, caption, _ in make_pictures(4, 12)]
    other = [(np.asarray(image).tobytes(), caption) for image, caption, _ in make_pictures(5, 12)]
    assert first == again
    assert first != other
    assert all(image.size == (128, 128) for image, _, _ in make_pictures(4, 3))


def test_captions_name_colour_shape_background_and_place():
    image, caption, scene = next(make_pictures(9, 1))
    item = scene.items[0]
    assert item.color in caption and item.shape in caption and f"{scene.background} background" in caption
    assert item.position in caption


def test_the_training_split_never_draws_a_held_out_pair_and_sees_every_colour_and_shape():
    assert len(HELD_OUT) == len(COLORS)
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        for item in sample_scene(rng).items:
            seen.add((item.color, item.shape))
    assert not seen & HELD_OUT
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)
    held = {(s.items[0].color, s.items[0].shape) for s in (sample_scene(rng, held_out=True) for _ in range(200))}
    assert held == set(HELD_OUT)


def test_the_judge_reads_the_generators_own_pictures_right():
    rng = random.Random(1)
    scenes = [sample_scene(rng, two_objects=0.0) for _ in range(150)]
    scenes += [sample_scene(rng, held_out=True) for _ in range(50)]
    colour = shape = 0
    for scene in scenes:
        verdict = judge(render_scene(scene))
        colour += verdict.color == scene.items[0].color
        shape += verdict.shape == scene.items[0].shape
    assert colour / len(scenes) >= 0.99 and shape / len(scenes) >= 0.99, (colour, shape)


def test_the_judge_sees_nothing_on_an_empty_background():
    blank = render_scene(sample_scene(random.Random(2))).resize((1, 1)).resize((128, 128))
    assert judge(blank).shape is None


def test_make_shapes_writes_pictures_and_captions(tmp_path):
    subprocess.run([sys.executable, "tools/make_shapes.py", str(tmp_path), "--count", "3", "--held-out"],
                   check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"000{i}.{e}" for i in range(3) for e in ("png", "txt")]
    caption = (tmp_path / "0000.txt").read_text()
    assert any(f"{c} {s}" in caption for c, s in HELD_OUT)
