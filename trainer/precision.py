"""Pick the compute settings for the device at hand: the mixed-precision mode, the dtype of the frozen weights
(and where they go), and the CPU thread count.

    place_weights(base, params, device, "fp16")   # frozen weights in float16 on the device, LoRA in float32
    pin_threads(config.train.num_threads)         # before train(): the CLI and the job runner
"""

from __future__ import annotations

import os

import torch


def choose_mixed_precision(requested: str) -> str:
    """`auto` is bf16 on GPUs that support it, fp16 on older GPUs, and fp32 ('no') on CPU."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def place_weights(base, params: dict[str, list[torch.nn.Parameter]], device, mixed_precision: str) -> None:
    """Move every component to `device` already in its compute dtype (one `.to(device, dtype)` each, never a
    float32 copy on the GPU first); the VAE as its family says (SDXL's encodes in float32 under fp16).

    The trainable LoRA tensors in `params` stay float32 with their exact initial values, as diffusers'
    `cast_training_params` keeps them (here without a round trip through the compute dtype).
    """
    compute = weight_dtype(mixed_precision)
    pipe, family = base.pipe, base.family
    saved = [[p.detach().float().clone() for p in group] for group in params.values()]
    for name in ("unet", "vae", *family.text_encoder_names):
        dtype = family.vae_dtype(pipe.vae, compute) if name == "vae" else compute
        getattr(pipe, name).to(device, dtype)
    for group, values in zip(params.values(), saved, strict=True):
        for p, value in zip(group, values, strict=True):
            p.data = value.to(p.device)


def pin_threads(num_threads: int) -> int:
    """Set torch's CPU threads from `train.num_threads` (0: every core this process may use) and return the
    count, so a resumed run computes like the first whichever process (and environment) started it."""
    if num_threads == 0:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(num_threads)
    return num_threads
