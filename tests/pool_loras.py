"""LoRA files for the pool tests, made the way trainers write them, in both key formats.

Weights are random but seeded and non-zero on both sides (lora_A and lora_B), so every LoRA changes the image.
Keys are peft's (`<module>.lora_A.weight`) converted with diffusers' own converters: diffusers/PEFT files through
`StableDiffusionPipeline.save_lora_weights`, kohya/A1111 files through `convert_state_dict_to_kohya`.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def peft_tensors(model: torch.nn.Module, targets, rank: int, seed: int, widen: int = 1,
                 prefix: str = "") -> dict[str, torch.Tensor]:
    """peft-form LoRA tensors for every Linear of `model` whose name ends in one of `targets`.

    `widen` multiplies the layer sizes: a LoRA made on a wider model of the same block names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(tuple(targets)):
            size_in, size_out = module.in_features * widen, module.out_features * widen
            tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, size_in, generator=generator) * 0.3
            tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(size_out, rank, generator=generator) * 0.3
    return tensors


def write_lora(pipe, path: Path, seed: int, rank: int = 4, fmt: str = "peft", text_encoder: bool = False,
               widen: int = 1, unet: bool = True, extra: dict[str, torch.Tensor] | None = None,
               targets=UNET_TARGETS) -> Path:
    """Write a LoRA for `pipe` to `path` in `fmt` (`peft` or `kohya`); alpha equals the rank (scale 1)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from safetensors.torch import save_file

    path = Path(path)
    unet_sd = peft_tensors(pipe.unet, targets, rank, seed, widen) if unet else {}
    te_sd = peft_tensors(pipe.text_encoder, TE_TARGETS, rank, seed + 1000) if text_encoder else {}
    if fmt == "peft":
        StableDiffusionPipeline.save_lora_weights(
            path.parent, weight_name=path.name, safe_serialization=True,
            unet_lora_layers=convert_state_dict_to_diffusers(unet_sd) if unet_sd else None,
            text_encoder_lora_layers=convert_state_dict_to_diffusers(te_sd) if te_sd else None)
        if extra:
            from safetensors.torch import load_file

            save_file({**load_file(path), **extra}, path)
        return path
    both = {f"unet.{k}": v for k, v in unet_sd.items()}
    both.update({f"text_encoder.text_model.{k}": v for k, v in te_sd.items()})
    kohya = convert_state_dict_to_kohya(both)
    kohya = {k.replace("lora_te1_", "lora_te_") if k.startswith("lora_te1_") else k: v for k, v in kohya.items()}
    kohya.update(extra or {})
    save_file({k: v.contiguous() for k, v in kohya.items()}, path,
              metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
    return path
