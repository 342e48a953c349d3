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
