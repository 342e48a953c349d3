"""A config as TOML with each field's help (the docstring under it in trainer/config.py) as a comment.

    print(commented_toml(load_config("run.toml")))     # what `lora-studio config` prints

The output loads back to the same config (`tests/test_readme.py` checks); values are written by tomli_w.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import tomli_w

from trainer.config import TrainConfig, field_docs

WIDTH = 100


def commented_toml(config: TrainConfig) -> str:
    """Every setting of `config`, each under `# its help`, sections under their own description."""
    lines = ["# LoRA Studio config: every setting with its help. Load it with `lora-studio train --config FILE`.", ""]
    docs = field_docs(TrainConfig)
    sections = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines += _comment(docs.get(f.name, "")) + [_line(f.name, value)]
    for name, section in sections:
        lines += ["", *_comment(_class_doc(type(section))), f"[{name}]"]
        section_docs = field_docs(type(section))
        for f in dataclasses.fields(section):
            lines += _comment(section_docs.get(f.name, "")) + [_line(f.name, getattr(section, f.name))]
    return "\n".join(lines) + "\n"


def _class_doc(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(f"{cls.__name__}(") else doc  # dataclasses make one from the signature


def _comment(text: str) -> list[str]:
    text = " ".join(text.replace("`", "").split())
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2)] if text else []


def _line(key: str, value: Any) -> str:
    return tomli_w.dumps({key: value}).strip()
