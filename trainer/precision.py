"""Pick the mixed-precision mode and the dtype of the frozen weights for the device at hand."""

from __future__ import annotations

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
