"""Which settings would fit a given memory: cheaper settings tried in order, each re-estimated.

    found = fit_settings(config, parse_size("8GB"))
    found.changes       # ["train.gradient_checkpointing = true", "train.batch_size = 1"]; None when none fits
    found.settings      # {"train.gradient_checkpointing": True, "train.batch_size": 1}: the same, as dotted fields
    fit_settings(config, budget, only=MEMORY_CHANGES)   # only changes a resume from a checkpoint accepts
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from trainer.config import TrainConfig, changed_fields
from trainer.errors import StudioError
from trainer.estimate.build import model_spec
from trainer.estimate.step import Estimate, estimate_step, with_settings

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
MIN_RESOLUTION = 256


def parse_size(text: str) -> int:
    """`8GB`, `7.5 GiB`, `12000MB` in bytes. GB means GiB, as graphics cards are sold ("an 8 GB card")."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise StudioError("is not a memory size", where=repr(text), fix="Write it like 8GB, 24GiB or 7500MB.")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


@dataclass
class FitResult:
    """The estimate as configured and, when it does not fit, the first combination of changes that does."""

    budget: int
    original: Estimate
    changes: list[str] | None = field(default_factory=list)
    """Settings to change (dotted field = value), [] when the run fits as it is, None when nothing tried fits."""
    fitted: Estimate | None = None
    tried: list[tuple[list[str], int]] = field(default_factory=list)
    """Each combination tried and its peak."""
    settings: dict[str, Any] | None = field(default_factory=dict)
    """`changes` as machine-readable dotted fields and their new values (every field they change, such as
    data.keep_tokens with data.shuffle_tags); {} when the run fits, None when nothing tried fits."""


def _steps(config: TrainConfig, resolution: int):
    """(change for the config, the line the user sets) in the order to try them."""
    if not config.train.gradient_checkpointing:
        yield {"gradient_checkpointing": True}, "train.gradient_checkpointing = true"
    if config.train.batch_size > 1:
        yield {"batch_size": 1}, "train.batch_size = 1"
    if config.network.train_text_encoder or config.data.shuffle_tags or config.data.caption_dropout:
        yield ({"train_text_encoder": False}, "network.train_text_encoder = false, data.shuffle_tags = false, "
               "data.caption_dropout = 0 (cached text)")
    if config.optim.optimizer == "adamw":  # the others would need another learning rate too
        yield ({"optimizer": "adamw8bit"},
               'optim.optimizer = "adamw8bit" (needs a CUDA GPU and `pip install bitsandbytes`)')
    if config.model.quantize == "none":
        yield {"quantize": "nf4"}, 'model.quantize = "nf4" (4-bit frozen UNet; `pip install \'lora-studio[quant]\'`)'
    while resolution > MIN_RESOLUTION:
        resolution = max(MIN_RESOLUTION, (resolution * 3 // 4) // 64 * 64)
        yield {"resolution": resolution}, f"data.resolution = {resolution}"


def fit_settings(config: TrainConfig, budget: int, family: str | None = None,
                 optimizer: str | None = None, only: Collection[str] | None = None) -> FitResult:
    """Add cheaper settings one at a time (gradient checkpointing, batch 1, cached text, 8-bit Adam, a 4-bit
    UNet, then lower resolutions) until the estimate fits `budget`; the first combination that fits is the answer.
    `optimizer` overrides `optim.optimizer`; with `only` (dotted fields), a change that would set any other
    field is skipped (trainer.checkpoint.MEMORY_CHANGES: what a resume may change)."""
    spec = model_spec(config.model, family)
    if optimizer is not None:
        config = with_settings(config, optimizer=optimizer)
    original = estimate_step(config, spec=spec)
    result = FitResult(budget, original)
    if original.peak_bytes <= budget:
        return result
    changes: list[str] = []
    current = config
    resolution = original.settings["resolution"]
    for change, line in _steps(config, resolution):
        candidate = with_settings(current, **change)
        if only is not None and not set(changed_fields(config, candidate)) <= set(only):
            continue
        current = candidate
        changes.append(line)
        est = estimate_step(current, spec=spec)
        result.tried.append((list(changes), est.peak_bytes))
        if est.peak_bytes <= budget:
            result.changes, result.fitted = changes, est
            result.settings = changed_fields(config, current)
            return result
    result.changes = result.settings = None
    return result

