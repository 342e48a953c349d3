"""A write that hits a full disk (here: a file-size limit set in the child) says so and where, whichever
library writes the file: plain Python, safetensors (Rust) or torch.save (C++)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WRITE = """
import sys, torch
from safetensors.torch import save_file
from trainer.errors import TrainingError
from trainer.fileio import atomic_path, atomic_write_bytes

def write_python(path):
    atomic_write_bytes(path, b"x" * 200_000)

def write_safetensors(path):
    with atomic_path(path) as tmp:
        save_file({"w": torch.zeros(50_000)}, str(tmp))

def write_torch(path):
    with atomic_path(path) as tmp:
        torch.save({"w": torch.zeros(50_000)}, str(tmp))

for name, write in [("python", write_python), ("safetensors", write_safetensors), ("torch", write_torch)]:
    try:
        write(sys.argv[1] + "." + name)
    except TrainingError as err:
        print(name, "|", err)
    else:
        print(name, "| no error")
"""


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.timeout(120)
def test_every_writer_reports_a_full_disk_with_the_path(tmp_path):
    target = tmp_path / "out" / "lora"
    run = subprocess.run([sys.executable, "-c", WRITE, str(target)], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=limit_file_size, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" | ", 1) for line in run.stdout.splitlines())
    assert set(lines) == {"python", "safetensors", "torch"}
    for name, message in lines.items():
        assert "the disk is full" in message and str(target) in message, (name, message)
        assert "Free space on the disk that holds" in message
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left
