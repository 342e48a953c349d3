"""The embedded tiny Stable Diffusion pipelines: the real architectures at a fraction of the width.

    pipe = build_tiny_pipeline("sd15")          # same weights on every machine (fixed seed)
    save_tiny_model("sd15", "tiny-model/")      # a diffusers folder StableDiffusionPipeline loads

The SD 1.x model keeps SD 1.5's block structure (four down and four up blocks, three with cross-attention,
two layers per block, a VAE that downsamples 8x, 77-token prompts), so every state-dict key is named as in
the real model, and its default resolution is 128 px.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TINY_NAMES = {"tiny": "sd15"}
TINY_RESOLUTION = {"sd15": 128}
TINY_SEED = 20241122

_SD15_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=64,
    norm_num_groups=16,
)

_SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=128,
    scaling_factor=0.18215,
)

_SD15_TEXT = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)

_SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_tiny_pipeline(family: str = "sd15"):
    """Build the tiny pipeline of `family` from the fixed seed; the same weights on every machine."""
    if family not in TINY_RESOLUTION:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(TINY_RESOLUTION)}")
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from trainer.models.tokenizer import tiny_vocab, write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder))
    vocab_size = len(tiny_vocab()[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**_SD15_UNET)
        vae = AutoencoderKL(**_SD_VAE)
        text_config = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                     eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **_SD15_TEXT)
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(**_SD_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_model(family: str, out_dir: str | Path) -> Path:
    """Write the tiny pipeline as a diffusers folder (safetensors weights)."""
    out_dir = Path(out_dir)
    build_tiny_pipeline(family).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def weights_hash(pipe) -> str:
    """SHA-256 over every tensor of the UNet, VAE and text encoder, in key order."""
    digest = hashlib.sha256()
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{component}.{key}".encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
