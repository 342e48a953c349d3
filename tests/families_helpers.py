"""Shared helpers of the model-family tests: tiny pipelines built once per test process.

    pipe = tiny_pipe("sdxl")          # read-only; copy.deepcopy it before adding LoRA layers
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from safetensors.torch import save_file

from trainer.models.ldm_keys import pipeline_to_original
from trainer.models.tiny import build_tiny_pipeline

FAMILIES = ["sd15", "sd2", "sdxl"]


@cache
def tiny_pipe(family: str):
    return build_tiny_pipeline(family)


def write_single_file(family: str, path: Path) -> Path:
    """The tiny model of `family` as an original-layout single-file checkpoint."""
    save_file(pipeline_to_original(tiny_pipe(family), family), str(path))
    return path
