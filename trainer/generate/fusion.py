"""LoRAs fused into the base weights for faster previews, and taken out again exactly.

    fusion = Fusion(pipe, family.components)
    fusion.fuse(["ink", "film"], key)    # diffusers' fuse_lora: W += s * (alpha / r) * B @ A for each adapter
    fusion.unfuse()                      # unfuse_lora, then the saved base weights copied back bit for bit

A fused layer runs as a plain Linear (peft skips its adapters while merged), so a preview costs what the base
model costs. peft's unmerge subtracts the same product it added, which in floating point does not always give
the original bits back; the weights each fuse changes are saved first and restored after unfusing, so
strength 0 after any number of fuses is exactly the base image (the gap this class fills).
"""

from __future__ import annotations

import warnings

import torch


class Fusion:
    """Which mix is fused into a pipeline (None: nothing), and the base weights it replaced."""

    def __init__(self, pipe, components: tuple[str, ...]):
        self.pipe = pipe
        self.components = components
        self.key: tuple | None = None
        """What the caller fused (its names and strengths); None when nothing is."""
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def fuse(self, adapters: list[str], key: tuple) -> int:
        """Merge `adapters` at their current scales into the base weights; returns the layers changed."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.unfuse()
        wanted = set(adapters)
        components = self._with_lora()
        for component in components:
            for module in getattr(self.pipe, component).modules():
                if isinstance(module, BaseTunerLayer) and wanted & set(getattr(module, "scaling", {})):
                    weight = module.get_base_layer().weight
                    self._saved.append((weight, weight.detach().clone()))
        if components:
            self.pipe.fuse_lora(components=components, adapter_names=adapters)
        self.key = key
        return len(self._saved)

    def unfuse(self) -> None:
        if self.key is None:
            return
        with warnings.catch_warnings():  # peft warns for each layer of an adapter that was not fused
            warnings.filterwarnings("ignore", message="Already unmerged")
            self.pipe.unfuse_lora(components=self._with_lora())
        with torch.no_grad():
            for weight, saved in self._saved:
                weight.copy_(saved)
        self._saved, self.key = [], None

    def _with_lora(self) -> list[str]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        found = []
        for name in self.components:
            module = getattr(self.pipe, name, None)
            if module is not None and any(isinstance(m, BaseTunerLayer) for m in module.modules()):
                found.append(name)
        return found
