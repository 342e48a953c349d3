"""The hot-swap slot of a compiled pipeline: one adapter whose weights are replaced in place.

Under `torch.compile`, adding an adapter, changing which adapters are active or assigning a new float
scale recompiles the UNet. diffusers' hotswap (`enable_lora_hotswap` before the first load, then
`load_lora_into_unet(..., hotswap=True)`) copies a new LoRA's weights into the tensors already there,
padded to `target_rank`, so the compiled graph stays valid.

diffusers' hotswap rebuilds a LoraConfig, maps keys and walks the whole UNet's state dict each time, which
costs about as much as a tenth of reloading the tiny model. So the slot runs it once per LoRA, when the
LoRA is added, and keeps what it wrote (each layer's A and B rows up to the LoRA's rank, and its scale);
switching to a LoRA later copies those tensors back into the same places, which is all a swap needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.generate.lorafile import LoraPlan

SLOT = "hotswap_slot"


@dataclass
class _LayerContents:
    lora_a: torch.Tensor
    """The first `rank` rows of lora_A (the rest of the padded tensor is zero)."""
    lora_b: torch.Tensor
    """The first `rank` columns of lora_B."""
    scale: float


class HotswapSlot:
    """One named adapter in the UNet whose contents change by copying, never by re-injecting."""

    def __init__(self, pipe, target_rank: int):
        self.pipe = pipe
        self.target_rank = target_rank
        self.owner: str | None = None
        self.modules: set[str] = set()
        self._layers: list[torch.nn.Module] = []
        self._contents: dict[str, list[_LayerContents]] = {}
        self._base_scales: list[float] = []
        self._weight = 1.0
        pipe.enable_lora_hotswap(target_rank=target_rank)

    def why_not(self, plan: LoraPlan) -> str:
        """Why this LoRA cannot go into the slot ("" when it can)."""
        if plan.has_text_encoder:
            return "it has text-encoder layers, which diffusers cannot hot-swap"
        if plan.rank > self.target_rank:
            return f"its rank {plan.rank} is above the pool's target_rank {self.target_rank}"
        extra = sorted(plan.modules - self.modules) if self._layers else []
        if extra:
            return f"it targets {len(extra)} layers the first LoRA does not (e.g. {extra[0]})"
        return ""

    def add(self, name: str, plan: LoraPlan, inject) -> None:
        """Let diffusers write `plan` into the slot once, keep what it wrote, then put the owner back.

        The first LoRA creates the slot by a normal load; later ones go in by diffusers' hot-swap."""
        if not self._layers:
            if getattr(self.pipe.unet, "peft_config", None):
                # A normal adapter was loaded first and used up diffusers' one-time preparation; arm it again.
                self.pipe.enable_lora_hotswap(target_rank=self.target_rank, check_compiled="ignore")
            inject(plan, SLOT, hotswap=False)
            self.modules = set(plan.modules)
            self._layers = [m for m in self.pipe.unet.modules()
                            if isinstance(getattr(m, "scaling", None), dict) and SLOT in m.scaling]
        else:
            try:
                inject(plan, SLOT, hotswap=True)
            except Exception:
                self._put_back(self.owner)  # a failed hot-swap may have written part of the new LoRA
                self.set_strength(self._weight)
                raise
        self._contents[name] = self._capture(plan.rank)
        previous, self.owner = self.owner, name
        self._base_scales = [c.scale for c in self._contents[name]]
        self._put_back(previous)
        self.set_strength(self._weight)

    def fill(self, name: str) -> None:
        """Make `name`'s LoRA the slot's contents: in-place copies only, so the compiled graph stays valid."""
        if self.owner == name:
            return
        with torch.no_grad():
            for layer, kept in zip(self._layers, self._contents[name], strict=True):
                _copy_rows(layer.lora_A[SLOT].weight, kept.lora_a, dim=0)
                _copy_rows(layer.lora_B[SLOT].weight, kept.lora_b, dim=1)
        self._base_scales = [c.scale for c in self._contents[name]]
        self.owner = name

    def set_strength(self, weight: float) -> None:
        """Scale the slot's LoRA in place (set_adapters would put floats in: a recompile)."""
        self._weight = weight
        for module, base in zip(self._layers, self._base_scales, strict=True):
            scale = module.scaling[SLOT]
            if isinstance(scale, torch.Tensor):
                scale.fill_(weight * base)
            else:
                module.scaling[SLOT] = weight * base

    def activate(self, weight: float) -> None:
        """Make the slot the only active UNet adapter, every text encoder's LoRAs off, at `weight`."""
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder

        from trainer.models.families import family_for_pipeline

        self.pipe.unet.enable_lora()
        self.pipe.unet.set_adapter(SLOT)
        for name in family_for_pipeline(self.pipe).text_encoder_names:
            encoder = getattr(self.pipe, name, None)
            if getattr(encoder, "peft_config", None):
                disable_lora_for_text_encoder(encoder)
        self.set_strength(weight)

    def release(self, name: str) -> None:
        """Forget `name` (its weights stay in the slot until the next LoRA replaces them)."""
        self._contents.pop(name, None)
        if self.owner == name:
            self.set_strength(0.0)
            self.owner = f"<{name}, unloaded>"

    def _put_back(self, name: str | None) -> None:
        if name in self._contents:
            self.owner = None
            self.fill(name)

    def _capture(self, rank: int) -> list[_LayerContents]:
        contents = []
        for layer in self._layers:
            scale = layer.scaling[SLOT]
            contents.append(_LayerContents(
                lora_a=layer.lora_A[SLOT].weight.detach()[:rank].clone(),
                lora_b=layer.lora_B[SLOT].weight.detach()[:, :rank].clone(),
                scale=float(scale.item() if isinstance(scale, torch.Tensor) else scale)))
        return contents


def _copy_rows(target: torch.Tensor, kept: torch.Tensor, dim: int) -> None:
    """Copy `kept` into the start of `target` along `dim` and zero the rest (the padding up to target_rank)."""
    rank = kept.shape[dim]
    target.narrow(dim, 0, rank).copy_(kept)
    if rank < target.shape[dim]:
        target.narrow(dim, rank, target.shape[dim] - rank).zero_()
