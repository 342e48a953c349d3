"""The hot-swap slot of a compiled pipeline: one adapter whose weights are replaced in place.

Under `torch.compile`, adding an adapter, changing which adapters are active or assigning a new float
scale recompiles the UNet. diffusers' hotswap (`enable_lora_hotswap` before the first load, then
`load_lora_into_unet(..., hotswap=True)`) copies a new LoRA's weights into the tensors already there,
padded to `target_rank`, so the compiled graph stays valid. This module keeps that slot and the strength
of the LoRA in it.
"""

from __future__ import annotations

import torch

from trainer.generate.lorafile import LoraPlan

SLOT = "hotswap_slot"


class HotswapSlot:
    """One named adapter in the UNet whose contents change by copying, never by re-injecting."""

    def __init__(self, pipe, target_rank: int):
        self.pipe = pipe
        self.target_rank = target_rank
        self.owner: str | None = None
        self.modules: set[str] = set()
        self._base_scales: list[tuple[torch.nn.Module, float]] = []
        self._layers: list[torch.nn.Module] = []
        pipe.enable_lora_hotswap(target_rank=target_rank)

    def why_not(self, plan: LoraPlan) -> str:
        """Why this LoRA cannot go into the slot ("" when it can)."""
        if plan.has_text_encoder:
            return "it has text-encoder layers, which diffusers cannot hot-swap"
        if plan.rank > self.target_rank:
            return f"its rank {plan.rank} is above the pool's target_rank {self.target_rank}"
        extra = sorted(plan.modules - self.modules) if self.owner is not None else []
        if extra:
            return f"it targets {len(extra)} layers the first LoRA does not (e.g. {extra[0]})"
        return ""

    def fill(self, name: str, plan: LoraPlan, inject) -> None:
        """Put `plan` in the slot: the first time by a normal load, then by an in-place hot-swap."""
        if self.owner == name:
            return
        if self.owner is None:
            if getattr(self.pipe.unet, "peft_config", None):
                # A normal adapter was loaded first and used up diffusers' one-time preparation; arm it again.
                self.pipe.enable_lora_hotswap(target_rank=self.target_rank, check_compiled="ignore")
            inject(plan, SLOT, hotswap=False)
            self.modules = set(plan.modules)
            self._layers = [m for m in self.pipe.unet.modules()
                            if isinstance(getattr(m, "scaling", None), dict) and SLOT in m.scaling]
        else:
            self.set_strength(1.0)
            inject(plan, SLOT, hotswap=True)
        self.owner = name
        self._base_scales = [(m, float(m.scaling[SLOT])) for m in self._layers]

    def set_strength(self, weight: float) -> None:
        """Scale the slot's LoRA in place (set_adapters would put floats in: a recompile)."""
        for module, base in self._base_scales:
            scale = module.scaling[SLOT]
            if isinstance(scale, torch.Tensor):
                scale.fill_(weight * base)
            else:
                module.scaling[SLOT] = weight * base

    def activate(self, weight: float) -> None:
        """Make the slot the only active UNet adapter, text-encoder LoRAs off, at `weight`."""
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder

        self.pipe.unet.enable_lora()
        self.pipe.unet.set_adapter(SLOT)
        if getattr(self.pipe.text_encoder, "peft_config", None):
            disable_lora_for_text_encoder(self.pipe.text_encoder)
        self.set_strength(weight)

    def release(self, name: str) -> None:
        """Forget the owner (its weights stay in the slot until the next LoRA replaces them)."""
        if self.owner == name:
            self.set_strength(0.0)
            self.owner = f"<{name}, unloaded>"
