"""The installed libraries work together: a fresh install that resolves a transformers needing a newer peft than
exists (transformers 5.24 wants peft >= 0.22) fails here, in CI, instead of on a user's `--train-text-encoder`.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from packaging.version import Version
from safetensors.torch import load_file

from trainer.loop import train


def test_installed_transformers_accepts_the_installed_peft():
    from transformers.integrations import peft as transformers_peft

    wanted = Version(transformers_peft.MIN_PEFT_VERSION)
    installed = Version(importlib.metadata.version("peft"))
    assert installed >= wanted, (
        f"transformers {importlib.metadata.version('transformers')} needs peft >= {wanted} for text-encoder LoRA "
        f"but peft {installed} is installed: tighten the transformers bound in pyproject.toml")


@pytest.mark.parametrize("family", ["tiny", "tiny-sdxl"])
def test_text_encoder_lora_trains_with_the_installed_libraries(quick_config, family):
    """Two real steps with network.train_text_encoder: the text-encoder LoRA B weights move off zero."""
    result = train(quick_config(**{"model.base_model": family, "train.steps": 2, "train.batch_size": 1,
                                   "network.train_text_encoder": True, "optim.text_encoder_lr": 1e-2}))
    tensors = load_file(str(result.outputs[1]))
    encoders = ("text_encoder.", "text_encoder_2.") if family == "tiny-sdxl" else ("text_encoder.",)
    for prefix in encoders:
        lora_b = [t for k, t in tensors.items() if k.startswith(prefix) and "lora_B" in k]
        assert lora_b, f"no {prefix} LoRA in {result.outputs[1]}"
        assert any(torch.count_nonzero(t) for t in lora_b), f"{prefix} LoRA did not train"
