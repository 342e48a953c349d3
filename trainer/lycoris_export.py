"""Loader files for the non-LoRA `network.type`s: LoHa/LoKr in the LyCORIS layout, AdaLoRA as a plain LoRA.

    tensors, configs = plain_lora_from_adalora(peft_tensors, lora_configs)  # lora_A/lora_B, E folded in
    kohya = trim_pruned_ranks(kohya)                                         # AdaLoRA: drop the ranks pruned
    lycoris = lycoris_state_dict(peft_tensors, stem_of, network)             # lora_unet_….hada_w1_a, .alpha

The LyCORIS layout is what AUTOMATIC1111/Forge (extensions-builtin/Lora network_hada.py, network_lokr.py) and
ComfyUI (comfy/weight_adapter/loha.py, lokr.py) read: per layer `<stem>.hada_w1_a/_w1_b/_w2_a/_w2_b` or
`<stem>.lokr_w1` (or `_w1_a/_w1_b`) and `lokr_w2` (or `_w2_a/_w2_b`), plus `<stem>.alpha`; they scale by
alpha / rank where rank is `hada_w1_b`'s (LoKr: `lokr_w2_b`'s, else `lokr_w1_b`'s) first dimension, and by 1
when a LoKr layer has no factored matrix, so such layers get peft's alpha / r folded into `lokr_w1`.
diffusers reads none of these (its kohya converter knows lora_down/lora_up only), which the export says.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftConfig

LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
NETWORK_MODULE = {"lora": "networks.lora", "adalora": "networks.lora", "loha": "lycoris.kohya",
                  "lokr": "lycoris.kohya"}
DIFFUSERS_NOTE = {
    "loha": "diffusers cannot load LoHa files (its LoRA loader reads lora_down/lora_up only); load "
            "{name}.safetensors in AUTOMATIC1111, Forge or ComfyUI, or {name}.peft.safetensors with peft "
            "(LoHaConfig).",
    "lokr": "diffusers cannot load LoKr files (its LoRA loader reads lora_down/lora_up only); load "
            "{name}.safetensors in AUTOMATIC1111, Forge or ComfyUI, or {name}.peft.safetensors with peft "
            "(LoKrConfig).",
}


def split_key(key: str) -> tuple[str, str, str]:
    """`unet.down_blocks.….to_q.hada_w1_a` -> ("unet", "down_blocks.….to_q", "hada_w1_a")."""
    component, rest = key.split(".", 1)
    module, name = rest.rsplit(".", 1)
    return component, module, name


def lycoris_state_dict(peft_tensors: dict[str, torch.Tensor], stem_of, network) -> dict[str, torch.Tensor]:
    """LoHa/LoKr tensors under LyCORIS names; `stem_of(component, module)` gives the kohya stem."""
    layers: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in peft_tensors.items():
        component, module, name = split_key(key)
        layers.setdefault((component, module), {})[name] = value
    out = {}
    scale = network.alpha / network.rank
    for (component, module), tensors in layers.items():
        stem = stem_of(component, module)
        alpha = float(network.alpha)
        if network.type == "lokr" and "lokr_w1_b" not in tensors and "lokr_w2_b" not in tensors:
            tensors = dict(tensors, lokr_w1=tensors["lokr_w1"] * scale)  # loaders use scale 1 here
            alpha = float(network.rank)
        for name, value in tensors.items():
            out[f"{stem}.{name}"] = value.contiguous()
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


def plain_lora_from_adalora(peft_tensors: dict[str, torch.Tensor], lora_configs: dict[str, PeftConfig]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, LoraConfig]]:
    """AdaLoRA's B·diag(E)·A · alpha/(r+1e-5) as a plain LoRA of the same rank, scale 1: lora_A = E·A (pruned
    ranks are zero rows), lora_B = B · alpha/(r+1e-5). Exact, and loads where any LoRA loads."""
    tensors = {}
    for key, value in peft_tensors.items():
        component, module, name = split_key(key)
        if not name.startswith("lora_A"):
            continue
        config = lora_configs[component]
        prefix = f"{component}.{module}"
        energy = peft_tensors[f"{prefix}.lora_E"]
        scale = config.lora_alpha / (config.init_r + 1e-5)
        dtype = value.dtype
        tensors[f"{prefix}.lora_A.weight"] = (value.float() * energy.float()).to(dtype).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = (peft_tensors[f"{prefix}.lora_B"].float() * scale).to(dtype)
    configs = {component: LoraConfig(r=config.init_r, lora_alpha=config.init_r,
                                     target_modules=sorted(config.target_modules))
               for component, config in lora_configs.items()}
    return tensors, configs


def trim_pruned_ranks(kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop each layer's all-zero ranks (AdaLoRA's pruned ones) and layers with none left.

    Every layer keeps the file's one alpha and its up matrix takes the rank change (kept/rank), so
    alpha/kept · up' = alpha/rank · up: diffusers' kohya loader gets the layers' ranks right (rank_pattern) but
    mis-scales layers whose alpha differs from the most common one (seen with diffusers 0.42.1)."""
    out = {}
    for key, down in kohya.items():
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key.removesuffix(".lora_down.weight")
        kept = down.reshape(down.shape[0], -1).abs().sum(dim=1) > 0
        if not kept.any():
            continue
        up = kohya[f"{stem}.lora_up.weight"][:, kept]
        out[key] = down[kept].contiguous()
        out[f"{stem}.lora_up.weight"] = (up.float() * (int(kept.sum()) / down.shape[0])).to(up.dtype).contiguous()
        out[f"{stem}.alpha"] = kohya[f"{stem}.alpha"]
    return out


def kept_ranks(kohya: dict[str, torch.Tensor]) -> dict[str, int]:
    """Rank of each layer in a kohya file (for AdaLoRA's metadata)."""
    return {k.removesuffix(".lora_down.weight"): int(v.shape[0]) for k, v in kohya.items()
            if k.endswith(".lora_down.weight")}
