"""The README's examples are real: its config loads, and the commands it names exist."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.cli import build_parser
from trainer.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_config_example_loads(tmp_path):
    block = README.split("## Configs", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "run.toml").write_text(block)
    config = load_config(tmp_path / "run.toml")
    assert config.optim.lr_scheduler == "cosine" and config.data.trigger_word == "lsstyle"


def test_every_lora_studio_subcommand_in_the_readme_exists():
    known = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    named = set(re.findall(r"lora-studio ([a-z][a-z-]+)", README))
    assert named <= known, named - known
