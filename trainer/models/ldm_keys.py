"""Diffusers names -> the original (LDM/SGM) names of Stable Diffusion checkpoints.

    ldm_unet_module("down_blocks.1.attentions.0.proj_in", unet.config)  # -> "input_blocks.4.1.proj_in"
    state_dict = pipeline_to_original(pipe, "sdxl")                     # a single-file checkpoint

diffusers ships only the other direction (`loaders/single_file_utils.py`, original -> diffusers); its
inverse lives in `scripts/convert_diffusers_to_original_*.py` of the diffusers repository, which is not in
the wheel. This module is that inverse, derived from the UNet config so it also fits the tiny models, in
one place: sd-scripts names SDXL LoRA layers by it (`lora_unet_input_blocks_4_1_...`), and the tests write
single-file checkpoints with it. `tests/test_models_single_file.py` checks that diffusers' own loader turns
its output back into the same weights.
"""

from __future__ import annotations

import re

import torch

_RESNET_RENAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                   "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                   "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                  ("to_out.0", "proj_out")]
# The prefixes a text encoder's weights carry in a single file, per family and pipeline component.
TEXT_PREFIXES = {
    "sd15": {"text_encoder": ("clip", "cond_stage_model.transformer.text_model.")},
    "sd2": {"text_encoder": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"text_encoder": ("clip", "conditioner.embedders.0.transformer.text_model."),
             "text_encoder_2": ("openclip", "conditioner.embedders.1.model.")},
}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def ldm_unet_module(name: str, unet_config) -> str:
    """The original name of a diffusers UNet module or parameter path (`down_blocks.1.attentions.0...`)."""
    for old, new in _UNET_TOP.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    per = unet_config["layers_per_block"] + 1
    up_attention = ["CrossAttn" in kind for kind in unet_config["up_block_types"]]
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)", lambda i, j: f"input_blocks.{per * i + j + 1}.0", True),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)", lambda i, j: f"input_blocks.{per * i + j + 1}.1", False),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda i: f"input_blocks.{per * (i + 1)}.0.op", False),
        (r"mid_block\.resnets\.(\d+)", lambda j: f"middle_block.{2 * j}", True),
        (r"mid_block\.attentions\.0", lambda: "middle_block.1", False),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)", lambda i, j: f"output_blocks.{per * i + j}.0", True),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)", lambda i, j: f"output_blocks.{per * i + j}.1", False),
        (r"up_blocks\.(\d+)\.upsamplers\.0",
         lambda i: f"output_blocks.{per * i + per - 1}.{2 if up_attention[i] else 1}", False),
    ]
    for pattern, build, is_resnet in rules:
        match = re.match(pattern + r"(?=\.|$)", name)
        if not match:
            continue
        rest = name[match.end():]
        if is_resnet:
            head = re.match(r"\.(\w+)", rest)
            if head and head.group(1) in _RESNET_RENAMES:
                rest = "." + _RESNET_RENAMES[head.group(1)] + rest[head.end():]
        return build(*(int(g) for g in match.groups())) + rest
    raise KeyError(f"no original name known for UNet module {name!r}")


def unet_to_original(state_dict: dict[str, torch.Tensor], unet_config) -> dict[str, torch.Tensor]:
    return {UNET_PREFIX + ldm_unet_module(key, unet_config): value for key, value in state_dict.items()}


def vae_to_original(state_dict: dict[str, torch.Tensor], vae_config) -> dict[str, torch.Tensor]:
    blocks = len(vae_config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        new = key.replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for old, ldm in _VAE_ATTENTION:
                new = new.replace(f".attn_1.{old}.", f".attn_1.{ldm}.")
            if value.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def clip_to_original(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP text encoders keep transformers' names under a prefix."""
    return {prefix + key.removeprefix("text_model."): value for key, value in state_dict.items()}


def openclip_to_original(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP text encoders: fused q/k/v `in_proj`, `resblocks`, `ln_final`, a transposed projection."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    flat = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    simple = {"embeddings.token_embedding.weight": "token_embedding.weight",
              "embeddings.position_embedding.weight": "positional_embedding",
              "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    for key, value in flat.items():
        if key in simple:
            out[prefix + simple[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif match := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            layer, which, kind = match.groups()
            fused.setdefault(f"transformer.resblocks.{layer}.attn.in_proj_{kind}", {})[which] = value
        else:
            new = re.sub(r"^encoder\.layers\.", "transformer.resblocks.", key)
            for old, ldm in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
                new = new.replace(old, ldm)
            out[prefix + new] = value
    for key, parts in fused.items():
        out[prefix + key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def pipeline_to_original(pipe, family: str) -> dict[str, torch.Tensor]:
    """Every weight of a diffusers pipeline of `family` under the names of an original single file."""
    out = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    for component, (kind, prefix) in TEXT_PREFIXES[family].items():
        weights = getattr(pipe, component).state_dict()
        convert = clip_to_original if kind == "clip" else openclip_to_original
        out.update(convert(weights, prefix))
    return {key: value.detach().contiguous() for key, value in out.items()}
