"""Bad LoRA files give a LoraFileError that names the file, and the pool keeps working with what it had."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from pool_loras import UNET_TARGETS, peft_tensors, write_lora

from trainer.errors import LoraFileError
from trainer.generate import AdapterPool

QUICK = dict(steps=1, guidance=1.0, width=64, height=64, output_type="latent")


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_pipe):
    return write_lora(tiny_pipe, tmp_path_factory.mktemp("good") / "good.safetensors", seed=1, fmt="kohya")


@pytest.fixture(scope="module")
def pool(good):
    pool = AdapterPool("tiny")
    pool.load("good", good)
    return pool


@pytest.fixture(scope="module")
def before(pool):
    return pool.generate("a tower", seed=2, strengths={"good": 1.0}, **QUICK)[0].numpy()


def truncated(good, folder):
    path = folder / "truncated.safetensors"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def header_too_long(good, folder):
    path = folder / "header.safetensors"
    data = good.read_bytes()
    path.write_bytes((len(data) * 2).to_bytes(8, "little") + data[8:])
    return path


def pickled(good, folder):
    path = folder / "pickled.safetensors"
    path.write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1, 2, 3]}))
    return path


def torch_zip(good, folder):
    path = folder / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    return path


def text(good, folder):
    path = folder / "notes.safetensors"
    path.write_text("this is not a LoRA, just some notes about one\n" * 4)
    return path


def not_lora(good, folder):
    from safetensors.torch import save_file

    path = folder / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, path)
    return path


def other_family_names(good, folder):
    from safetensors.torch import save_file

    path = folder / "sdxl.safetensors"  # keys of blocks the SD 1.x UNet does not have
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.lora_down.weight": torch.ones(4, 640),
               "lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.lora_up.weight": torch.ones(640, 4),
               "lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.alpha": torch.tensor(4.0)}, path,
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


def other_width(good, folder):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    from trainer.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    tensors = peft_tensors(pipe.unet, UNET_TARGETS, rank=4, seed=9, widen=2)  # same names, twice the width
    StableDiffusionPipeline.save_lora_weights(folder, weight_name="wide.safetensors",
                                              unet_lora_layers=convert_state_dict_to_diffusers(tensors))
    return folder / "wide.safetensors"


@pytest.mark.parametrize("make, message", [
    (truncated, "truncated|not a complete"),
    (header_too_long, "header claims"),
    (pickled, "pickle"),
    (torch_zip, "pickle"),
    (text, "not a complete safetensors|not a safetensors|not JSON"),
    (not_lora, "no LoRA weights"),
    (other_family_names, "matches no layer.*another model family.*sdxl"),
    (other_width, "does not fit this model.*other sizes"),
])
def test_bad_file_is_refused_by_name_and_the_pool_keeps_working(pool, before, good, tmp_path, make, message):
    adapters = pool.pipe.get_list_adapters()
    path = make(good, tmp_path)
    with pytest.raises(LoraFileError, match=message) as caught:
        pool.load("bad", path)
    assert str(path) in str(caught.value)
    assert pool.loaded() == ["good"]
    assert pool.pipe.get_list_adapters() == adapters
    after = pool.generate("a tower", seed=2, strengths={"good": 1.0}, **QUICK)[0]
    assert np.array_equal(before, after.numpy())


def test_missing_file_names_the_path(pool, tmp_path):
    with pytest.raises(LoraFileError, match="does not exist") as caught:
        pool.load("gone", tmp_path / "gone.safetensors")
    assert "gone.safetensors" in str(caught.value)


def test_header_that_is_json_but_offsets_past_the_end(pool, tmp_path):
    header = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [4, 4],
                                                          "data_offsets": [0, 64]}}).encode()
    path = tmp_path / "short.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(LoraFileError, match="truncated: its header describes 64 bytes"):
        pool.load("short", path)
