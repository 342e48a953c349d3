"""Low-rank factors by SVD, the share of an update a rank keeps, and kohya LoRA files in and out.

    layers = kohya_layers(read_lora_file("ink.safetensors"))       # {stem: Layer(down, up, alpha)}
    up, down, kept = factor(delta, rank=8)                          # delta ~ up @ down; kept: Frobenius share
    write_kohya_lora("out.safetensors", layers, metadata)           # atomic, read back and checked

`kept` is ||delta_r||_F / ||delta||_F = sqrt(sum of the kept squared singular values / sum of all), the figure
sd-scripts' `networks/resize_lora.py` prints as "retained Frobenius norm"; a report gives it per layer and for
the whole network (every layer's update, at its scale, as one vector).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import LoraFileError
from trainer.fileio import atomic_path


@dataclass
class Layer:
    """One kohya LoRA layer: delta W = (alpha / rank) * up @ down (convolutions flattened to matrices)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class RankReport:
    """How much of each layer's update the new rank keeps (Frobenius norm ratio, 1.0 = all of it)."""

    layers: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)
    """stem -> (rank before, rank after); for an extract, before is the layer's full rank."""
    _kept_sq: float = 0.0
    _total_sq: float = 0.0

    def add(self, stem: str, singular: torch.Tensor, keep: int, scale: float, before: int) -> None:
        squares = singular.double().pow(2)
        total, kept = float(squares.sum()), float(squares[:keep].sum())
        self.layers[stem] = kept**0.5 / total**0.5 if total > 0 else 1.0
        self.ranks[stem] = (before, keep)
        self._kept_sq += kept * scale**2
        self._total_sq += total * scale**2

    @property
    def overall(self) -> float:
        return (self._kept_sq / self._total_sq) ** 0.5 if self._total_sq > 0 else 1.0

    def summary(self) -> str:
        if not self.layers:
            return "no layers"
        low = min(self.layers, key=self.layers.get)
        high = max(self.layers, key=self.layers.get)
        mean = sum(self.layers.values()) / len(self.layers)  # sd-scripts' "average Frobenius norm retention"
        return (f"kept {self.overall:.2%} of the update (Frobenius norm) over {len(self.layers)} layers; per layer "
                f"{mean:.2%} on average, from {self.layers[low]:.2%} ({low}) to {self.layers[high]:.2%} ({high})")

    def lines(self) -> list[str]:
        return [f"{stem}: rank {self.ranks[stem][0]} -> {self.ranks[stem][1]}, kept {kept:.2%}"
                for stem, kept in self.layers.items()]


def choose_rank(singular: torch.Tensor, rank: int, share: float | None = None) -> int:
    """`rank`, or with `share` the smallest rank that keeps that share of the Frobenius norm (at most `rank`;
    sd-scripts' `sv_fro` dynamic method)."""
    keep = min(rank, int(singular.numel()))
    if share is not None and float(singular.pow(2).sum()) > 0:
        squares = singular.double().pow(2)
        cumulative = squares.cumsum(0) / squares.sum()
        keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor(share**2 - 1e-12, dtype=torch.float64))) + 1)
    return max(1, keep)


def factor(delta: torch.Tensor, rank: int, share: float | None = None):
    """(up, down, singular values, kept rank) with up @ down the best rank-`rank` approximation of `delta` (a
    matrix), the singular values split evenly between the two factors; `share`: see `choose_rank`."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    keep = choose_rank(s, rank, share)
    root = s[:keep].sqrt()
    return u[:, :keep] * root, root[:, None] * vh[:keep], s, keep


def factor_pair(up: torch.Tensor, down: torch.Tensor, rank: int, share: float | None = None):
    """As `factor(up @ down, rank)` without building the full matrix: QR of each side leaves an r x r core.

    up @ down = Qu (Ru Rd^T) Qd^T, so the SVD of the small core gives that of the product (exactly, and in
    milliseconds for a 1280-wide layer where a full SVD takes a second)."""
    qu, ru = torch.linalg.qr(up.double())
    qd, rd = torch.linalg.qr(down.double().T)
    u, s, vh = torch.linalg.svd(ru @ rd.T)
    keep = choose_rank(s, rank, share)
    root = s[:keep].sqrt()
    return (qu @ u[:, :keep]) * root, root[:, None] * (vh[:keep] @ qd.T), s, keep


def kohya_layers(lora) -> dict[str, Layer]:
    """The layers of a kohya-format `LoraFile`; a missing `.alpha` means alpha = rank (kohya's rule)."""
    if lora.format != "kohya":
        raise LoraFileError("has diffusers/PEFT keys; resize reads kohya files (`lora_unet_…` keys)",
                            where=str(lora.path),
                            fix="Pass the kohya file (LoRA Studio writes <name>.safetensors beside each "
                                "<name>.peft.safetensors).")
    layers: dict[str, Layer] = {}
    for key in lora.tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key.removesuffix(".lora_down.weight")
        up = lora.tensors.get(f"{stem}.lora_up.weight")
        if up is None:
            raise LoraFileError(f"has {key} without its {stem}.lora_up.weight", where=str(lora.path),
                                fix="The file is incomplete; export or download it again.")
        down = lora.tensors[key]
        alpha = lora.tensors.get(f"{stem}.alpha")
        layers[stem] = Layer(down, up, float(alpha) if alpha is not None else float(down.shape[0]))
    if not layers:
        raise LoraFileError("holds no lora_down/lora_up pairs", where=str(lora.path), fix="Pick a LoRA file.")
    return layers


def layer_tensors(stem: str, up: torch.Tensor, down: torch.Tensor, alpha: float, like: Layer | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The three kohya tensors of a layer; `like` gives the original shapes (convolutions keep their kernel)."""
    if like is not None:
        down = down.reshape(down.shape[0], *like.down.shape[1:])
        up = up.reshape(up.shape[0], down.shape[0], *like.up.shape[2:])
    return {f"{stem}.lora_down.weight": down.to(dtype).contiguous(),
            f"{stem}.lora_up.weight": up.to(dtype).contiguous(),
            f"{stem}.alpha": torch.tensor(float(alpha))}


def write_kohya_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a kohya LoRA atomically, then read it back with the pool's reader (a bad file never stays)."""
    from safetensors.torch import save_file

    from trainer.generate.lorafile import read_lora_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "format": "pt"})
        back = read_lora_file(tmp)
        pairs = sum(1 for k in back.tensors if k.endswith(".lora_down.weight"))
        if back.format != "kohya" or pairs * 3 != len(tensors):
            raise LoraFileError(f"came back with {pairs} layers in {back.format} keys", where=str(path),
                                fix="This is a bug in LoRA Studio; please report it.")
    return path


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """A LoRA factor as a matrix (a conv's (out, in, kh, kw) as (out, in*kh*kw))."""
    return tensor.reshape(tensor.shape[0], -1).float()
