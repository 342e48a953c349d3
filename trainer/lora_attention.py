"""A diffusers attention processor for LoRA training on the CPU: q, k and v with their LoRA in one projection.

    install_fused_attention(pipe.unet)    # before training on a CPU; every other case keeps its own processor

On a CPU the tiny UNet's training step is bound by the per-op overhead of many small ops, and the LoRA on
to_q, to_k, to_v and to_out.0 quadruples the ops of each projection (peft's layer runs the base linear, A, B,
the scale and the add, each a module call; diffusers' processor adds a dropout call and a division by 1.0).
This processor computes self-attention's q, k and v as one projection (cross-attention's k and v likewise,
over the text) and to_out.0 as one. Layers of up to 128 x 128 weights (the tiny models') fold the LoRA into
the weight each step, W + s B A, by one addmm (one baddbmm for q, k and v stacked), then run one linear: the
fewest ops, measured faster at every batch and size tried. Wider layers (every real model's) keep
base + B(A(x)), over the concatenated frozen q/k/v weights and the block-diagonal B matrices, because the
folded form's weight gradient is a full-size matmul. The numbers are peft's and diffusers' to float rounding
(tests/test_lora_attention.py); the time saved is in bench/RESULTS.md ("Against the diffusers example"). The
parameters stay peft's, so export, resume and hot-swap see nothing new.

Anything outside that plain training state (a mask, a norm, a merged or disabled adapter, DoRA, dropout, more
than one adapter, a quantized base layer, mismatched dtypes outside autocast) runs the module's previous
processor unchanged. The concatenated frozen weights are kept per module (a copy of the q/k/v weights, which
is why this is for the CPU, where the tiny models train and memory is not the limit), rebuilt when a weight
moves or is written in place, and dropped whenever the fallback runs (a merged adapter writes the base weights
through `.data`, which no version counter sees).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

FOLD_MAX_WEIGHT = 128 * 128
"""Projections with at most this many weights fold their LoRA into the weight each step (see above)."""


class FusedLoraAttnProcessor:
    """One per Attention module: the fused path in the plain LoRA training state, `fallback` otherwise."""

    def __init__(self, fallback):
        self.fallback = fallback
        self._weights: dict[str, tuple[tuple, torch.Tensor]] = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        layers = (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])
        adapter = _plain_adapter(attn, hidden_states, encoder_hidden_states, attention_mask, layers, args, kwargs)
        if adapter is None:
            self._weights.clear()  # peft merges through `.data`, which no version counter sees
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args,
                                 **kwargs)
        batch, length, _ = hidden_states.shape
        heads = attn.heads
        if encoder_hidden_states is None:
            qkv = self._project("qkv", hidden_states, layers[:3], adapter)
            query, key, value = qkv.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            query = _lora_linear(attn.to_q, hidden_states, adapter).view(batch, length, heads, -1).transpose(1, 2)
            kv = self._project("kv", encoder_hidden_states, layers[1:3], adapter)
            key, value = kv.view(batch, encoder_hidden_states.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value)
        return _lora_linear(attn.to_out[0], out.transpose(1, 2).reshape(batch, length, -1), adapter)

    def _project(self, name: str, x: torch.Tensor, layers, adapter: str) -> torch.Tensor:
        frozen = self._frozen(name, layers)
        up = [m.lora_B[adapter].weight for m in layers]
        scales = [m.scaling[adapter] for m in layers]
        if any(s != scales[0] for s in scales):
            up, scales = [w * s for w, s in zip(up, scales, strict=True)], [1.0]
        down = [m.lora_A[adapter].weight for m in layers]
        if _folds(layers[0]):
            n = len(layers)
            weight = torch.baddbmm(frozen.view(n, -1, frozen.shape[1]), torch.stack(up), torch.stack(down),
                                   alpha=scales[0])
            return F.linear(x, weight.view(frozen.shape))
        out = F.linear(x, frozen)
        return out.add_(F.linear(F.linear(x, torch.cat(down)), torch.block_diag(*up)), alpha=scales[0])

    def _frozen(self, name: str, layers) -> torch.Tensor:
        weights = [m.base_layer.weight for m in layers]
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
        cached = self._weights.get(name)
        if cached is None or cached[0] != key:
            cached = self._weights[name] = (key, torch.cat([w.detach() for w in weights]))
        return cached[1]


def install_fused_attention(unet: torch.nn.Module) -> int:
    """Give each of the UNet's Attention modules the fused processor, its current one as the fallback;
    returns how many it gave."""
    processors = {name: FusedLoraAttnProcessor(proc) for name, proc in unet.attn_processors.items()}
    count = len(processors)
    unet.set_attn_processor(processors)  # which empties the dict it is given
    return count


def _lora_linear(layer: LoraLinear, x: torch.Tensor, adapter: str) -> torch.Tensor:
    base, down, up, scale = layer.base_layer, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, \
        layer.scaling[adapter]
    if _folds(layer):
        return F.linear(x, torch.addmm(base.weight, up, down, alpha=scale), base.bias)
    return F.linear(x, base.weight, base.bias).add_(F.linear(F.linear(x, down), up), alpha=scale)


def _folds(layer: LoraLinear) -> bool:
    return layer.in_features * layer.out_features <= FOLD_MAX_WEIGHT


def _plain_adapter(attn, hidden_states, encoder_hidden_states, attention_mask, layers, args, kwargs) -> str | None:
    """The one active adapter's name when every projection is a plain peft LoRA layer in training state and
    the module needs nothing but q/k/v, attention and to_out.0; None for anything else."""
    if (attention_mask is not None or args or kwargs or hidden_states.ndim != 3 or attn.spatial_norm is not None
            or attn.group_norm is not None or attn.norm_cross or attn.norm_q is not None
            or attn.norm_k is not None or attn.residual_connection or attn.rescale_output_factor != 1
            or (attn.to_out[1].p and attn.training)):
        return None
    adapter = None
    for layer in layers:
        if not isinstance(layer, LoraLinear) or layer.disable_adapters or layer.merged:
            return None
        active = layer.active_adapters
        if len(active) != 1 or active[0] != (adapter or active[0]):
            return None
        adapter = active[0]
        if (adapter not in layer.lora_A or layer.use_dora.get(adapter)
                or type(layer.base_layer) is not torch.nn.Linear or layer.lora_B[adapter].bias is not None
                or not isinstance(layer.lora_dropout[adapter], torch.nn.Identity)):
            return None
    q, k, v = layers[:3]
    if (q.base_layer.bias is not None or k.base_layer.bias is not None or v.base_layer.bias is not None
            or not q.out_features == k.out_features == v.out_features
            or attn.scale != (q.out_features // attn.heads) ** -0.5):  # SDPA's default scale, as diffusers' own
        return None
    if not torch.is_autocast_enabled(hidden_states.device.type):
        dtypes = {hidden_states.dtype, *(m.base_layer.weight.dtype for m in layers),
                  *(m.lora_A[adapter].weight.dtype for m in layers)}
        if encoder_hidden_states is not None:
            dtypes.add(encoder_hidden_states.dtype)
        if len(dtypes) != 1:
            return None
    return adapter
