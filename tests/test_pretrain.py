"""Pretraining the tiny base, run for real at a few steps: deterministic from its seed, resumable, loadable."""

import hashlib

import torch

from trainer.models.pretrain import PretrainConfig, pretrain
from trainer.models.tiny import build_tiny_pipeline, load_pretrained_weights, weights_hash

QUICK = dict(unet_steps=2, unet_batch=2, pictures=4, checkpoint_every=1)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_weights_and_a_longer_run_resumes(tmp_path):
    first = pretrain(PretrainConfig(out=str(tmp_path / "a"), **QUICK))
    second = pretrain(PretrainConfig(out=str(tmp_path / "b"), **QUICK))
    assert _sha(first) == _sha(second)
    random_hash = weights_hash(build_tiny_pipeline("tiny-random"))
    pipe = load_pretrained_weights(build_tiny_pipeline("tiny-random"), first, _sha(first))
    assert weights_hash(pipe) != random_hash  # the VAE and UNet moved; the structure is the same
    longer = pretrain(PretrainConfig(out=str(tmp_path / "a"), **dict(QUICK, unet_steps=3)))
    state = torch.load(tmp_path / "a" / "unet_state.pt", weights_only=True)
    assert state["step"] == 3
    assert _sha(longer) != _sha(second)


def test_the_encoded_pictures_are_encoded_again_when_the_picture_settings_change(tmp_path):
    from trainer.models.pretrain import encode_pictures, sharpen_text_encoder

    pipe = build_tiny_pipeline("tiny-random")
    sharpen_text_encoder(pipe.text_encoder)
    first = encode_pictures(pipe, PretrainConfig(pictures=4, seed=1), tmp_path)
    assert torch.equal(encode_pictures(pipe, PretrainConfig(pictures=4, seed=1), tmp_path)["mean"], first["mean"])
    other = encode_pictures(pipe, PretrainConfig(pictures=4, seed=2), tmp_path)
    assert not torch.equal(other["mean"], first["mean"]), "a cache keyed by the picture count alone was reused"


def test_the_sdxl_base_trains_on_what_its_pipeline_feeds_the_unet(tmp_path):
    from trainer.models.pretrain import unet_conditions
    from trainer.models.shapes import make_pictures

    cfg = PretrainConfig(out=str(tmp_path / "xl"), family="sdxl", **QUICK)
    path = pretrain(cfg)
    assert path.name == "tiny-sdxl.safetensors"
    pipe = load_pretrained_weights(build_tiny_pipeline("sdxl"), path, _sha(path))
    assert weights_hash(pipe) != weights_hash(build_tiny_pipeline("sdxl"))
    data = torch.load(tmp_path / "xl" / "data.pt", weights_only=True)
    # Both encoders' penultimate states and text_encoder_2's pooled output, as the pipeline computes them with the
    # shipped (sharpened, fp16) encoders; the empty caption is zeros, as the pipeline's unconditional half is.
    first = sorted({caption for _, caption, _ in make_pictures(cfg.seed + 101, cfg.pictures)})[0]
    embeds, _, pooled, _ = pipe.encode_prompt(first, device="cpu", do_classifier_free_guidance=False)
    # (to float rounding: the pretrain embeds the captions in batches)
    assert torch.allclose(data["embeds"][0], embeds[0], atol=1e-5)
    assert torch.allclose(data["pooled"][0], pooled[0], atol=1e-5)
    assert not data["embeds"][data["empty"]].any() and not data["pooled"][data["empty"]].any()
    kwargs = unet_conditions(pipe, data, torch.tensor([0, data["empty"]]))
    ids = pipe._get_add_time_ids((128, 128), (0, 0), (128, 128), torch.float32, text_encoder_projection_dim=64)
    assert torch.equal(kwargs["added_cond_kwargs"]["time_ids"], ids.repeat(2, 1))


def test_a_family_it_cannot_train_is_refused_by_name(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="'sd2'.*sd15 or sdxl"):
        pretrain(PretrainConfig(out=str(tmp_path / "v"), family="sd2", **QUICK))
    assert not (tmp_path / "v").exists()
