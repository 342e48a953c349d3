"""DoRA's magnitude as the `dora_scale` tensors ComfyUI and Forge apply, for the kohya file of a DoRA run.

    scales = comfy_dora_scales(base, ["unet"])   # {"unet.down_blocks.….to_q": tensor(out, 1)}

peft's DoRA layer computes W' = m · (W + ΔW) / ‖W + ΔW‖ (norms per output row). ComfyUI
(comfy/weight_adapter/base.py `weight_decompose`, v0.3.77) and Forge (its copy of it) read a `dora_scale`
whose first dimension is the output size as "per output row", and compute W' = s · (W + ΔW) / ‖W‖ with the
norm of the *base* weight (plus float eps). So s = m · (‖W‖ + eps) / ‖W + ΔW‖ makes their W' equal peft's.
The export knows W (the frozen base), so it can write that exactly.

Who cannot read it: AUTOMATIC1111 (extensions-builtin/Lora/network.py `apply_weight_decompose`) applies
`dora_scale` per input column only, and diffusers (0.42) drops `dora_scale` from kohya files with a
warning and loads the LoRA part alone; both would apply a different W'. The export says so;
`<name>.peft.safetensors` stays the file for diffusers.
"""

from __future__ import annotations

import torch

from trainer.network_types import ADAPTER

DORA_NOTE = ("network.use_dora: {name}.safetensors carries `dora_scale` as ComfyUI and Forge apply it (per "
             "output row, against the base weight's norm). AUTOMATIC1111 applies `dora_scale` per input column "
             "and diffusers drops `dora_scale` from kohya files (applying the LoRA part alone), so neither "
             "reproduces this DoRA from that file: load {name}.peft.safetensors with diffusers, or use "
             "ComfyUI/Forge.")


@torch.no_grad()
def comfy_dora_scales(base, components) -> dict[str, torch.Tensor]:
    """`<component>.<module>` -> dora_scale (out, 1, ...) for every DoRA layer of the trained components."""
    scales = {}
    for component in components:
        for name, module in getattr(base.pipe, component).named_modules():
            magnitudes = getattr(module, "lora_magnitude_vector", None)
            if not magnitudes or ADAPTER not in magnitudes:
                continue
            weight = module.get_base_layer().weight.float()
            delta = module.get_delta_weight(ADAPTER).float()
            rows = weight.shape[0]
            base_norm = weight.reshape(rows, -1).norm(dim=1) + torch.finfo(torch.float32).eps
            merged_norm = (weight + delta).reshape(rows, -1).norm(dim=1)
            scale = magnitudes[ADAPTER].weight.float() * base_norm / merged_norm
            scales[f"{component}.{name}"] = scale.reshape(rows, *[1] * (weight.dim() - 1)).cpu().contiguous()
    return scales


def split_magnitudes(peft_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors without peft's `lora_magnitude_vector` entries (the kohya file has dora_scale)."""
    return {k: v for k, v in peft_tensors.items() if not k.endswith("lora_magnitude_vector")}
