"""The embedded tiny model: SD 1.5's structure, deterministic weights, and a diffusers folder that loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainer.models.tiny import build_tiny_pipeline, weights_hash

# Changes only if the architecture, the seed or torch's initialisers change (pinned torch in CI).
EXPECTED_SD15_HASH = "29398df06aa42d0a212643b8519a31eafc86399af83005e6d1e581573d45bb07"


def test_weights_are_the_same_on_every_build(tiny_pipe):
    assert weights_hash(tiny_pipe) == weights_hash(build_tiny_pipeline("sd15"))
    assert weights_hash(tiny_pipe) == EXPECTED_SD15_HASH, (
        f"tiny model weights changed (torch {torch.__version__}); if intended, update EXPECTED_SD15_HASH")


def test_keeps_sd15_block_structure(tiny_pipe):
    unet = tiny_pipe.unet
    assert len(unet.down_blocks) == 4 and len(unet.up_blocks) == 4
    assert [hasattr(b, "attentions") for b in unet.down_blocks] == [True, True, True, False]
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == [False, True, True, True]
    names = {n for n, _ in unet.named_modules()}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in names
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0" in names
    assert "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k" in names
    assert 2 ** (len(tiny_pipe.vae.config.block_out_channels) - 1) == 8
    assert tiny_pipe.tokenizer.model_max_length == 77
    size_mb = sum(p.numel() for p in tiny_pipe.components["unet"].parameters()) * 4 / 1e6
    assert size_mb < 20


def test_cli_writes_a_folder_that_diffusers_loads_and_trains_on(tmp_path, example_dataset):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "trainer.cli", "tiny-model", str(folder)], check=True, timeout=300)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    from trainer.models.tiny import load_tiny_pipeline

    assert weights_hash(pipe) == weights_hash(load_tiny_pipeline("tiny"))  # the pretrained base (--random: not)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "trainer.cli", "train", "--base-model", str(folder), "--data",
                    str(example_dataset), "--steps", "2", "--resolution", "64", "--output", str(out)],
                   check=True, timeout=300, capture_output=True)
    assert (out / "lora.safetensors").is_file()
    assert 'base_model = "' + str(folder) in (out / "config.toml").read_text()


def test_pretrained_weights_round_trip_and_a_wrong_hash_is_refused(tmp_path, tiny_pipe):
    import copy
    import hashlib

    from trainer.errors import ModelError
    from trainer.models.tiny import load_pretrained_weights, save_pretrained_weights

    pipe = copy.deepcopy(tiny_pipe)
    pipe.vae.register_to_config(scaling_factor=0.25)
    path = save_pretrained_weights(pipe, tmp_path / "w.safetensors", meta={"seed": 1})
    loaded = load_pretrained_weights(build_tiny_pipeline("tiny-random"), path,
                                     hashlib.sha256(path.read_bytes()).hexdigest())
    assert loaded.vae.config.scaling_factor == 0.25
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor.half().float()), name
    with pytest.raises(ModelError, match="pinned SHA-256"):
        load_pretrained_weights(build_tiny_pipeline("tiny-random"), path, "0" * 64)
    with pytest.raises(ModelError, match="tiny-random"):
        load_pretrained_weights(build_tiny_pipeline("tiny-random"), tmp_path / "absent.safetensors")


def test_tiny_is_the_shipped_pretrained_base_and_tiny_random_stays_random(tiny_pipe):
    from trainer.models.tiny import PRETRAINED_FILE, load_tiny_pipeline

    assert PRETRAINED_FILE.stat().st_size < 20e6  # fp16, inside the package
    pretrained = load_tiny_pipeline("tiny")
    assert weights_hash(load_tiny_pipeline("tiny-random")) == EXPECTED_SD15_HASH
    assert weights_hash(pretrained) != EXPECTED_SD15_HASH
    assert pretrained.vae.config.norm_num_groups == 4 and pretrained.vae.config.scaling_factor != 0.18215
    assert sorted(pretrained.unet.state_dict()) == sorted(tiny_pipe.unet.state_dict())  # same keys, same model


def test_tiny_sdxl_is_the_shipped_pretrained_sdxl_base_and_tiny_sdxl_random_stays_random(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from trainer.models.tiny import PRETRAINED_SDXL_FILE, load_tiny_pipeline

    assert PRETRAINED_SDXL_FILE.stat().st_size < 20e6
    random_hash = weights_hash(build_tiny_pipeline("sdxl"))
    pretrained = load_tiny_pipeline("tiny-sdxl")
    assert weights_hash(load_tiny_pipeline("tiny-sdxl-random")) == random_hash != weights_hash(pretrained)
    for component in ("text_encoder", "text_encoder_2"):  # both frozen encoders ship (sharpened, fp16)
        random_tokens = getattr(build_tiny_pipeline("sdxl"), component).get_input_embeddings().weight
        assert not torch.equal(getattr(pretrained, component).get_input_embeddings().weight, random_tokens)
    folder = tmp_path / "tiny-sdxl"
    subprocess.run([sys.executable, "-m", "trainer.cli", "tiny-model", str(folder), "--family", "sdxl"],
                   check=True, timeout=300)
    written = StableDiffusionXLPipeline.from_pretrained(folder)
    assert weights_hash(written) == weights_hash(pretrained)
    assert written.vae.config.scaling_factor == pretrained.vae.config.scaling_factor != 0.13025


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_damaged_pretrained_file_is_refused_by_its_hash(tmp_path, family):
    from trainer.errors import ModelError
    from trainer.models.tiny import PRETRAINED_WEIGHTS, load_pretrained_weights

    shipped, sha256 = PRETRAINED_WEIGHTS[family]
    damaged = tmp_path / "tiny.safetensors"
    data = bytearray(shipped.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="pinned SHA-256"):
        load_pretrained_weights(build_tiny_pipeline(family), damaged, sha256)


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_the_pretrained_base_draws_the_colours_it_is_told(name):
    from trainer.generate.render import render
    from trainer.models.judge import judge
    from trainer.models.tiny import load_tiny_pipeline

    pipe = load_tiny_pipeline(name)
    for color, background in (("red", "blue"), ("yellow", "black"), ("green", "white")):
        verdict = judge(render(pipe, f"a big {color} circle on a {background} background, center", seed=0)[0])
        assert (verdict.color, verdict.background) == (color, background), verdict
