"""The README's quick run teaches the tiny base the example dataset's style (issue #15 item 4).

The quick run (bench/style_lora.py's QUICK_RUN, the README's first `lora-studio train` command) trains in a real
process on datasets/example (the shapes vocabulary in sepia); the LoRA then previews through the adapter pool.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from style_lora import PROMPTS, dataset_style, measure, moved_at_strength_1, train_quick_run  # noqa: E402


def test_the_quick_run_learns_the_sepia_style_and_strength_0_is_the_base_image(tmp_path):
    import numpy as np

    from trainer.generate.pool import AdapterPool

    lora = train_quick_run(tmp_path / "run", [])
    pool = AdapterPool("tiny", device="cpu")
    base_images = [np.asarray(pool.generate(prompt, seed=0)[0]) for prompt in PROMPTS]
    pool.load("shapes", lora)
    at_zero = [np.asarray(pool.generate(prompt, seed=0, strengths={"shapes": 0.0})[0]) for prompt in PROMPTS]
    assert all(np.array_equal(a, b) for a, b in zip(base_images, at_zero, strict=True))

    result = measure(pool, "shapes", PROMPTS, seeds=1)
    distance = result["sepia_distance"]
    distance["dataset"] = dataset_style(pool.pipe.vae)
    moved = moved_at_strength_1(distance)
    assert moved >= 0.3, distance  # bench/RESULTS.md: about half of the way with 4 seeds
    assert distance["1.0"] < distance["0.5"] < distance["0.0"], distance  # it grows with strength
    assert result["subject_kept"] >= 2 / 3, result  # the object stays where the base drew it
