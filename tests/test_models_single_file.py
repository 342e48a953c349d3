"""Single-file checkpoints: family detection, offline loading through diffusers, shipped configs, pickles."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from families_helpers import FAMILIES, tiny_pipe, write_single_file

from trainer.config import ModelConfig
from trainer.errors import ModelError
from trainer.models.loading import load_base
from trainer.models.single_file import (
    ASSETS,
    _config_folder,
    detect_family,
    read_shapes,
    write_clip_vocab,
    write_config_folder,
)
from trainer.models.tiny import weights_hash


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_round_trips_through_diffusers_loader(family, tmp_path):
    path = write_single_file(family, tmp_path / f"{family}.safetensors")
    assert detect_family(read_shapes(path)) == family
    base = load_base(ModelConfig(base_model=str(path)))
    assert base.family.name == family
    assert weights_hash(base.pipe) == weights_hash(tiny_pipe(family))
    assert base.default_resolution == 128
    assert base.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")


def test_detection_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ModelError, match="no UNet weights"):
        detect_family({"lora_unet_down_blocks_0.lora_down.weight": (4, 32)})
    refiner = {"model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
               "conditioner.embedders.0.model.text_projection": (1280, 1280)}
    with pytest.raises(ModelError, match="SDXL refiner"):
        detect_family(refiner)
    inpaint = {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)}
    with pytest.raises(ModelError, match="inpainting"):
        detect_family(inpaint)
    with pytest.raises(ModelError, match="no text encoder"):
        detect_family({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelError, match="broken.safetensors is not a readable safetensors file"):
        load_base(ModelConfig(base_model=str(broken)))


def test_unknown_width_asks_for_base_config_and_base_config_is_used(tmp_path):
    shapes = read_shapes(write_single_file("sd15", tmp_path / "m.safetensors"))
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (48, 4, 3, 3)
    with pytest.raises(ModelError, match="--base-config"):
        _config_folder(shapes, "sd15", tmp_path / "scratch", where="m.safetensors")
    folder = write_config_folder(tiny_pipe("sd15"), tmp_path / "configs")
    base = load_base(ModelConfig(base_model=str(tmp_path / "m.safetensors"), base_config=str(folder)))
    assert weights_hash(base.pipe) == weights_hash(tiny_pipe("sd15"))
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(ModelError, match=r"configs lacks tokenizer/vocab.json, tokenizer/merges.txt"):
        load_base(ModelConfig(base_model=str(tmp_path / "m.safetensors"), base_config=str(folder)))


@pytest.mark.parametrize("family,unet,vae,text", [
    ("sd15", 859_520_964, 83_653_863, [123_060_480]),
    ("sd2", 865_910_724, 83_653_863, [340_387_840]),
    ("sdxl", 2_567_463_684, 83_653_863, [123_060_480, 694_659_840]),
])
def test_shipped_configs_build_the_real_architectures(family, unet, vae, text):
    """The parameter counts of the published SD 1.5, SD 2.1 and SDXL base weights (built on meta)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(module):
        return sum(p.numel() for p in module.parameters())

    folder = ASSETS / family
    with init_empty_weights():
        config = UNet2DConditionModel.load_config(folder / "unet")
        assert count(UNet2DConditionModel.from_config(config)) == unet
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))) == vae
        for index, expected in enumerate(text):
            sub = "text_encoder" + ("_2" if index else "")
            cls = CLIPTextModelWithProjection if index else CLIPTextModel
            assert count(cls(CLIPTextConfig.from_pretrained(folder / sub))) == expected
    index = json.loads((folder / "model_index.json").read_text())
    pipeline = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    assert index["_class_name"] == pipeline


def test_shipped_tokenizer_is_clips(tmp_path):
    from transformers import CLIPTokenizer

    for name, pad in (("sd15/tokenizer", "<|endoftext|>"), ("sd2/tokenizer", "!"), ("sdxl/tokenizer_2", "!")):
        folder = tmp_path / name
        shutil.copytree(ASSETS / name, folder)
        write_clip_vocab(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        # ids of OpenAI's CLIP tokenizer (openai/clip-vit-large-patch14) for this prompt
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert len(tokenizer) == 49408 and tokenizer.pad_token == pad


@pytest.mark.parametrize("family", FAMILIES)
def test_a_real_width_checkpoint_gets_the_shipped_configs_complete(family, tmp_path):
    from diffusers import DiffusionPipeline

    from trainer.models.single_file import _check_config_folder

    folder = _config_folder({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, family,
                            tmp_path, where="real.safetensors")
    _check_config_folder(folder, family)  # every config and tokenizer file a single-file load reads
    index = DiffusionPipeline.load_config(folder)
    assert [index[name][1] for name in ("unet", "vae", "text_encoder")] == [
        "UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"]


def test_pickle_checkpoints_need_the_opt_in(tmp_path):
    from trainer.models.ldm_keys import pipeline_to_original

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": pipeline_to_original(tiny_pipe("sd15"), "sd15")}, ckpt)
    with pytest.raises(ModelError, match="--allow-pickle") as refused:
        load_base(ModelConfig(base_model=str(ckpt)))
    assert "model.ckpt is a pickle file" in str(refused.value)
    base = load_base(ModelConfig(base_model=str(ckpt), allow_pickle=True))
    assert weights_hash(base.pipe) == weights_hash(tiny_pipe("sd15"))


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_allow_pickle_still_refuses_code(tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"x": _RunsCode()}}))
    with pytest.raises(ModelError, match="evil.ckpt holds Python objects besides tensors"):
        load_base(ModelConfig(base_model=str(evil), allow_pickle=True))
    assert "pickle code ran" not in capsys.readouterr().out


def test_diffusers_folder_with_only_bin_weights_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    tiny_pipe("sd15").save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_base(ModelConfig(base_model=str(folder)))
    base = load_base(ModelConfig(base_model=str(folder), allow_pickle=True))
    assert weights_hash(base.pipe) == weights_hash(tiny_pipe("sd15"))
