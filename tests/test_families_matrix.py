"""Every family x {UNet only, UNet + text encoders}: train, export, load both files in a fresh diffusers pipeline,
preview them through the AdapterPool, and stop and resume.

The pool's image must be the diffusers pipeline's image: their difference is held to a small fraction of how far
the LoRA moves the image from the base, so a pool that drops the text-encoder keys (or half the UNet's) fails.
Each run trains 3 steps at 64 px with a learning rate high enough that lora_B is far from zero and both the UNet
and the text-encoder halves of the LoRA change the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.generate import AdapterPool, render
from trainer.loop import train
from trainer.models.tiny import load_tiny_pipeline

FAMILIES = {"tiny": "sd15", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}
CASES = [(model, te) for model in FAMILIES for te in (False, True)]
PROMPT = "a yellow circle on an orange background, sepia, lsstyle"  # the example captions' order
VIEW = dict(seed=3, steps=2, guidance=1.0, width=64, height=64, output_type="np")
TOLERANCE = 0.05
"""The pool may differ from diffusers by at most this fraction of the LoRA's own effect (measured: ~1e-6)."""


def _config(data, out, model: str, text_encoder: bool):
    # The text encoders learn at twice the UNet's rate: with the sepia captions at 5e-2, tiny-sd2's text-encoder half
    # moved the image by only 9 % of the whole LoRA's effect, under _assert_text_encoders_matter's 10 %.
    return load_config(None, {
        "model.base_model": model, "data.path": str(data), "data.resolution": 64, "train.steps": 3,
        "network.rank": 4, "network.alpha": 4.0, "optim.learning_rate": 5e-2, "export.output_dir": str(out),
        "export.dtype": "float32", "network.train_text_encoder": text_encoder, "optim.text_encoder_lr": 1e-1})


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{'te' if te else 'unet'}" for m, te in CASES])
def run(request, tmp_path_factory, two_images):
    model, text_encoder = request.param
    folder = tmp_path_factory.mktemp(f"matrix-{model}")
    result = train(_config(two_images, folder / "full", model, text_encoder))
    return model, text_encoder, folder, result


@pytest.fixture(scope="module")
def pools():
    return {}


def _pool(pools, model: str) -> AdapterPool:
    if model not in pools:
        pools[model] = AdapterPool(model, device="cpu")
    return pools[model]


def test_the_pool_previews_both_files_as_a_fresh_diffusers_pipeline_does(run, pools):
    model, text_encoder, _, result = run
    kohya, peft = result.outputs[:2]
    base = render(load_tiny_pipeline(model), PROMPT, **VIEW)[0]
    pool = _pool(pools, model)
    np.testing.assert_allclose(pool.generate(PROMPT, strengths={}, **VIEW)[0], base, atol=1e-6)
    for index, path in enumerate((kohya, peft)):
        pipe = load_tiny_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(path), adapter_name="trained")
        expected = render(pipe, PROMPT, **VIEW)[0]
        effect = np.abs(expected - base).mean()
        assert effect > 1e-3, f"{path.name}: the trained LoRA barely changes the image ({effect})"
        name = f"m{index}"
        report = pool.load(name, path)
        try:
            assert report.unmatched == [] and report.layers == len(load_file(str(peft))) // 2
            got = pool.generate(PROMPT, strengths={name: 1.0}, **VIEW)[0]
        finally:
            pool.unload(name)
        gap = np.abs(got - expected).mean()
        assert gap <= TOLERANCE * effect, f"{path.name}: pool vs diffusers {gap:.2e}, LoRA effect {effect:.2e}"
        if text_encoder:
            _assert_text_encoders_matter(pipe, expected, effect, path)


def _assert_text_encoders_matter(pipe, expected, effect, path) -> None:
    """The text-encoder half of this LoRA moves the image by more than the tolerance (else the test is blind)."""
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder

    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            disable_lora_for_text_encoder(getattr(pipe, name))
    unet_only = render(pipe, PROMPT, **VIEW)[0]
    assert np.abs(unet_only - expected).mean() > 2 * TOLERANCE * effect, path.name


def test_stop_then_resume_matches_the_uninterrupted_run(run, two_images):
    model, text_encoder, folder, full = run
    config = _config(two_images, folder / "part", model, text_encoder)
    stopped = train(config, should_stop=lambda: True)  # stops after step 1 with a checkpoint
    assert stopped.stopped and stopped.step == 1
    resumed = train(config, resume_from=folder / "part")
    expected, got = load_file(str(full.outputs[1])), load_file(str(resumed.outputs[1]))
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)
    assert resumed.losses == full.losses[1:]
