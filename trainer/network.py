"""Attach trainable adapter layers (peft LoRA, LoHa, LoKr or AdaLoRA: trainer/network_types.py) to the UNet's
attention projections, and to the text encoder(s) on request.

    lora_config = add_lora(base, config.network)   # freezes the base, adds adapter "default"
    params = trainable_parameters(base)            # {"unet": [...], "text_encoder": [...]}
"""

from __future__ import annotations

import torch
from peft import PeftConfig

from trainer.config import NetworkConfig
from trainer.errors import ConfigError
from trainer.network_types import ADAPTER, adapter_config

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def unet_lora_config(network: NetworkConfig, total_steps: int = 1000) -> PeftConfig:
    """The UNet's adapter config for `network.type` (trainer/network_types.py); `total_steps` sets AdaLoRA's
    rank budget schedule."""
    return adapter_config(network, network.target_modules, total_steps)


def text_encoder_lora_config(network: NetworkConfig, total_steps: int = 1000) -> PeftConfig:
    return adapter_config(network, TEXT_ENCODER_TARGETS, total_steps)


def add_lora(base, network: NetworkConfig, total_steps: int = 1000) -> dict[str, PeftConfig]:
    """Freeze every base weight and add the adapter layers; returns the peft config used per component."""
    pipe = base.pipe
    for name in ("unet", "vae", *base.family.text_encoder_names):
        getattr(pipe, name).requires_grad_(False)
    check_target_modules(pipe.unet, network.target_modules, base.family.label)
    configs = {"unet": unet_lora_config(network, total_steps)}
    pipe.unet.add_adapter(configs["unet"], adapter_name=ADAPTER)
    if network.train_text_encoder:
        for name in base.family.text_encoder_names:
            configs[name] = text_encoder_lora_config(network, total_steps)
            getattr(pipe, name).add_adapter(configs[name], adapter_name=ADAPTER)
    return configs


def check_target_modules(unet: torch.nn.Module, names: list[str], label: str = "") -> None:
    """Refuse `network.target_modules` names that match no layer peft can wrap, before peft sees them.

    peft matches a name against each module's dotted name or its ending (`to_q` matches `...attn1.to_q`),
    raises a bare traceback only when nothing matches, and silently ignores a name that matches nothing when
    another one does; this names every unmatched entry and the attention projections that exist.
    """
    layers = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    unmatched = [t for t in names if not any(n == t or n.endswith("." + t) for n in layers)]
    if not unmatched:
        return
    projections = dict.fromkeys(n.split(".attn1.", 1)[1] for n in layers if ".attn1." in n)
    raise ConfigError([f"network.target_modules names {', '.join(map(repr, unmatched))}, which match no "
                       f"Linear or Conv2d layer of the {label + ' ' if label else ''}UNet; its attention "
                       f"projections are "
                       f"{', '.join(projections)} (other layers: proj_in, proj_out, ff.net.0.proj, ff.net.2, "
                       "conv1, conv2, time_emb_proj)"])


def trainable_parameters(base, network: NetworkConfig) -> dict[str, list[torch.nn.Parameter]]:
    components = ["unet", *(base.family.text_encoder_names if network.train_text_encoder else ())]
    return {name: [p for p in getattr(base.pipe, name).parameters() if p.requires_grad] for name in components}
