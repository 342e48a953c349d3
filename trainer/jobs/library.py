"""Copy a finished job's LoRA files into the library (`<home>/loras/`) with a JSON sidecar of their origin.

    publish(home, "a1b2c3d4", [output/cats.safetensors, output/cats.peft.safetensors], config)
    # -> loras/cats.safetensors, loras/cats.peft.safetensors, loras/cats.json

The safetensors files keep their own metadata (base model, rank, config hash); the sidecar adds the job,
its step count and the full config so the library can be browsed without opening the tensors.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.fileio import atomic_path, atomic_write_bytes
from trainer.jobs.paths import Home


def publish(home: Home, job_id: str, outputs: list[Path], config: TrainConfig, step: int) -> list[Path]:
    """Copy every `.safetensors` output into the library and write the sidecar; returns the library paths."""
    loras = [Path(p) for p in outputs if str(p).endswith(".safetensors")]
    if not loras:
        return []
    home.loras.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(home.loras, config.export.name, job_id)
    copied = []
    for source in loras:
        suffix = source.name[len(config.export.name):] if source.name.startswith(config.export.name) \
            else "." + source.name
        target = home.loras / f"{stem}{suffix}"
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        copied.append(target)
    sidecar: dict[str, Any] = {
        "name": stem,
        "job": job_id,
        "files": [p.name for p in copied],
        "base_model": config.model.base_model,
        "steps": step,
        "rank": config.network.rank,
        "alpha": config.network.alpha,
        "config_hash": config.hash(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
    }
    atomic_write_bytes(home.loras / f"{stem}.json", json.dumps(sidecar, indent=2).encode("utf-8"))
    return [*copied, home.loras / f"{stem}.json"]


def _free_stem(folder: Path, name: str, job_id: str) -> str:
    """`name`, unless another job's LoRA already has it; then `name-<job id>`."""
    sidecar = folder / f"{name}.json"
    taken = (folder / f"{name}.safetensors").exists() or sidecar.exists()
    if not taken:
        return name
    try:
        if json.loads(sidecar.read_text()).get("job") == job_id:
            return name  # this job published before (a resumed or repeated finish): replace its files
    except (OSError, ValueError):
        pass
    return f"{name}-{job_id}"
