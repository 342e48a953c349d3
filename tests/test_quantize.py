"""A 4-bit base (`model.quantize = "nf4"`): the UNet's linear layers really are packed, the LoRA trains on top,
resumes exactly, and its file is a LoRA for the unquantized base that a fresh diffusers pipeline loads."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.families_helpers import tiny_pipe
from tests.helpers import image_array
from trainer.config import ModelConfig, NetworkConfig, load_config
from trainer.errors import ConfigError, ModelError
from trainer.loop import train
from trainer.models import load_base
from trainer.models.quantize import check_available, quantize_unet, weight_bytes
from trainer.network import add_lora

FAMILY_OF = {"tiny": "sd15", "tiny-sdxl": "sdxl"}


def _config(out, data, **overrides):
    values = {"model.base_model": "tiny", "model.quantize": "nf4", "data.path": str(data),
              "data.resolution": 64, "train.steps": 3, "optim.learning_rate": 1e-2,
              "export.output_dir": str(out), "export.dtype": "float32", "train.seed": 3}
    values.update(overrides)
    return load_config(None, values)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, two_images):
    """`runs(model, quantize)`: (config, result) of a 3-step run, trained once per module."""
    done: dict = {}

    def get(model: str, quantize: str = "nf4"):
        if (model, quantize) not in done:
            out = tmp_path_factory.mktemp(f"{quantize}-{model}")
            config = _config(out, two_images, **{"model.base_model": model, "model.quantize": quantize})
            done[model, quantize] = config, train(config)
        return done[model, quantize]

    return get


def test_the_frozen_unet_is_packed_into_4_bits_and_the_lora_attaches_to_it():
    import bitsandbytes as bnb

    base = load_base(ModelConfig(base_model="tiny"))
    before = weight_bytes(base.pipe.unet)
    swapped = quantize_unet(base, "nf4", torch.float32)
    add_lora(base, NetworkConfig())
    base.pipe.unet.to("cpu")  # the move packs the weights, as place_weights does in training
    to_q = base.pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert swapped > 0 and isinstance(to_q.base_layer, bnb.nn.Linear4bit)
    assert to_q.base_layer.weight.dtype == torch.uint8 and to_q.lora_A["default"].weight.dtype == torch.float32
    assert weight_bytes(base.pipe.unet) < before


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_training_on_the_4bit_base_changes_the_lora_and_keeps_full_precision_keys(runs, model):
    config, result = runs(model)
    assert all(np.isfinite(result.losses)) and result.step == 3
    kohya = load_file(str(result.outputs[0]))
    ups = [v for k, v in kohya.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.abs().max() > 0 for v in ups), "a LoRA up weight is still zero: it did not train"
    if model == "tiny":  # the same keys and shapes as a LoRA trained on the full-precision base
        _, full = runs(model, "none")
        reference = load_file(str(full.outputs[0]))
        assert {k: v.shape for k, v in kohya.items()} == {k: v.shape for k, v in reference.items()}
        assert result.losses != full.losses  # the base really was another (quantized) model


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_the_exported_lora_loads_into_a_fresh_unquantized_pipeline_and_changes_its_image(runs, model):
    _, result = runs(model)
    pipe = copy.deepcopy(tiny_pipe(FAMILY_OF[model]))
    before = image_array(pipe, "a red circle")
    pipe.load_lora_weights(str(result.outputs[0]), adapter_name="nf4")
    after = image_array(pipe, "a red circle")
    assert np.abs(after - before).max() > 1e-3


def test_a_stopped_and_resumed_4bit_run_matches_the_uninterrupted_one(runs, tmp_path, two_images):
    _, full = runs("tiny")
    config = _config(tmp_path, two_images)
    stopped = train(config, should_stop=lambda: True)  # stops after step 1 with a checkpoint
    assert stopped.stopped and stopped.step == 1
    resumed = train(config, resume_from=tmp_path)
    expected, got = load_file(str(full.outputs[0])), load_file(str(resumed.outputs[0]))
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)
    assert resumed.losses == full.losses[1:]


def test_bad_quantize_values_and_a_missing_bitsandbytes_are_refused_clearly(monkeypatch, two_images, tmp_path):
    with pytest.raises(ConfigError, match="model.quantize must be one of none, nf4"):
        _config(tmp_path, two_images, **{"model.quantize": "int3"})
    with pytest.raises(ConfigError, match="peft has no 4-bit loha layer"):
        _config(tmp_path, two_images, **{"network.type": "loha"})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ModelError, match=r"model.quantize = 'nf4' needs bitsandbytes.*lora-studio\[quant\]"):
        check_available("nf4")


def test_the_memory_estimate_counts_the_packed_weights_as_measured():
    from trainer.estimate import estimate_step

    def estimated(quantize):
        config = load_config(None, {"model.quantize": quantize, "train.mixed_precision": "no"})
        return estimate_step(config).parts["weights"]

    full = load_base(ModelConfig(base_model="tiny"))
    packed = load_base(ModelConfig(base_model="tiny"))
    quantize_unet(packed, "nf4", torch.float32)
    packed.pipe.unet.to("cpu")
    measured = weight_bytes(full.pipe.unet) - weight_bytes(packed.pipe.unet)
    assert estimated("none") - estimated("nf4") == pytest.approx(measured, rel=0.05)
