"""A checkpoint's LoRA loads in the pool as it is, so a grid can compare training steps with the final LoRA."""

from __future__ import annotations

import numpy as np

from trainer.generate import AdapterPool
from trainer.loop import train

QUICK = {"steps": 2, "width": 64, "height": 64, "guidance": 1.0, "output_type": "np"}


def test_grid_compares_a_checkpoint_with_the_final_lora(quick_config, tmp_path):
    result = train(quick_config(**{"train.steps": 4, "train.save_every": 2, "optim.learning_rate": 5e-3}))
    checkpoint_lora = tmp_path / "out" / "checkpoints" / "step-2" / "lora_0.safetensors"
    pool = AdapterPool("tiny")
    report = pool.load("step-2", checkpoint_lora)
    assert report.layers == 128 and not report.unmatched
    pool.load("final", result.outputs[0])
    base = pool.generate("a red star", seed=1, **QUICK)[0]
    early = pool.generate("a red star", seed=1, strengths={"step-2": 1.0}, **QUICK)[0]
    final = pool.generate("a red star", seed=1, strengths={"final": 1.0}, **QUICK)[0]
    assert not np.array_equal(early, base) and not np.array_equal(early, final)
    sheet = pool.grid(["a red star"], strengths=[0, 1], seed=1, loras=["step-2", "final"], steps=2, width=64,
                      height=64)
    assert sheet.width >= 2 * 64 and sheet.height >= 2 * 64  # a column per strength, a row per LoRA
