"""Base models: the embedded tiny pipelines, loading real ones, and what differs per family.

The names below load on first use (PEP 562), so `from trainer.models.tiny import TINY_NAMES` in a quick
command does not import torch through `families` and `loading`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.models.families import Family, family_for_pipeline
    from trainer.models.loading import Base, load_base

__all__ = ["Base", "Family", "family_for_pipeline", "load_base"]

_HOMES = {"Base": "loading", "load_base": "loading", "Family": "families", "family_for_pipeline": "families"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'trainer.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainer.models.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
