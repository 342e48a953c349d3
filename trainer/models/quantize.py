"""A 4-bit frozen UNet under the LoRA (QLoRA-style, `model.quantize = "nf4"`), through bitsandbytes.

    quantize_unet(base, "nf4", torch.bfloat16)   # before add_lora: every nn.Linear becomes a Linear4bit
    place_weights(base, ...)                     # the move to the device packs the weights into 4 bits

bitsandbytes runs its 4-bit layers on CUDA and, since 0.46, on the CPU, so one code path serves both and
the CPU tests exercise what a GPU runs. Only the UNet's linear layers are quantized (attention projections,
feed-forwards, time-embedding and projection layers); convolutions, norms, the VAE and the text encoders stay
in the compute dtype, as in diffusers' own bitsandbytes loading. peft wraps a `Linear4bit` with its own 4-bit
LoRA layer, so the LoRA tensors keep the names and shapes they have on a full-precision base: the exported
file is a LoRA for the unquantized model.

diffusers' `replace_with_bnb_linear` builds empty layers for a state dict still to be loaded (and its
quantizer refuses to run without a GPU); the tiny models are built in memory, so the swap below keeps each
layer's own weights.
"""

from __future__ import annotations

import importlib.util

import torch

from trainer.config import QUANTIZE_CHOICES  # noqa: F401  (the choices, for callers of this module)
from trainer.errors import ModelError

INSTALL_HINT = "pip install 'lora-studio[quant]' (bitsandbytes >= 0.46)"


def check_available(quantize: str) -> None:
    """Refuse a quantized base before any model loads when bitsandbytes is missing."""
    if quantize != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"= {quantize!r} needs bitsandbytes, which is not installed", where="model.quantize",
                         fix=f"Install it with {INSTALL_HINT}, or set model.quantize = 'none'.")


def quantize_unet(base, quantize: str, compute_dtype: torch.dtype) -> int:
    """Swap the UNet's `nn.Linear` layers for bitsandbytes 4-bit layers holding the same weights; returns
    how many were swapped. The weights are packed when the UNet moves to its device."""
    if quantize == "none":
        return 0
    check_available(quantize)
    import bitsandbytes as bnb

    swapped = 0
    unet = base.pipe.unet
    for parent in list(unet.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type=quantize, device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type=quantize,
                                             module=layer)
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            layer.requires_grad_(False)
            setattr(parent, name, layer)
            swapped += 1
    # peft reads this flag to wrap 4-bit layers in its own 4-bit LoRA layer (merge and dtype handling).
    unet.is_loaded_in_4bit = swapped > 0
    return swapped


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers as they are stored now (4-bit packs count as packed)."""
    tensors = [*module.parameters(), *module.buffers()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    for layer in module.modules():
        state = getattr(getattr(layer, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    return total
