"""Shared fixtures: the tiny pipeline, the example dataset, a temporary LoRA Studio home, a quick config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one thread per worker and per process it starts, or torch's threads spin
    # against each other and every test runs many times slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def example_dataset() -> Path:
    return ROOT / "datasets" / "example"


@pytest.fixture(scope="module")
def two_images(tmp_path_factory, example_dataset) -> Path:
    """The first two example images with their captions, in a folder of their own (one per test module)."""
    data = tmp_path_factory.mktemp("two-images")
    for stem in ("00", "01"):
        for suffix in (".png", ".txt"):
            shutil.copy(example_dataset / f"{stem}{suffix}", data / f"{stem}{suffix}")
    return data


@pytest.fixture(scope="session")
def tiny_pipe():
    from trainer.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline("sd15")


@pytest.fixture
def tmp_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    return home


@pytest.fixture
def quick_config(tmp_path, example_dataset):
    """A config that trains a few steps on the example dataset at 64 px (fast on a CPU)."""
    from trainer.config import load_config

    def make(**overrides):
        values = {"data.path": str(example_dataset), "data.resolution": 64, "train.steps": 4,
                  "export.output_dir": str(tmp_path / "out"), "export.dtype": "float32"}
        values.update(overrides)
        return load_config(None, values)

    return make
