"""Copy a finished job's LoRA files into the library (`<home>/loras/`) with a JSON sidecar of their origin.

    publish(home, "a1b2c3d4", [output/cats.safetensors, output/cats.peft.safetensors], config)
    # -> loras/cats.safetensors, loras/cats.peft.safetensors, loras/cats.json

Two jobs that finish together with the same name never replace each other: each claims its stem
atomically, and the second becomes `cats-2` (`jobs show` says which, as `library_name`).
The safetensors files keep their own metadata (base model, rank, config hash); the sidecar adds the job,
its step count and the full config so the library can be browsed without opening the tensors.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.errors import JobError
from trainer.fileio import atomic_path, atomic_write_bytes
from trainer.jobs.paths import Home


def publish(home: Home, job_id: str, outputs: list[Path], config: TrainConfig, step: int) -> list[Path]:
    """Copy every `.safetensors` output into the library and write the sidecar; returns the library paths."""
    loras = [Path(p) for p in outputs if str(p).endswith(".safetensors")]
    if not loras:
        return []
    home.loras.mkdir(parents=True, exist_ok=True)
    stem = _claim_stem(home.loras, config.export.name, job_id)
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


def _claim_stem(folder: Path, name: str, job_id: str) -> str:
    """Claim `name`, else `name-2`, `name-3`, ...: the first stem free of files, or already this job's.

    The claim is the sidecar itself, created with O_CREAT|O_EXCL: of two jobs finishing at the same time
    with the same name exactly one creates `name.json`, so the other moves on and neither replaces the
    other's LoRA (checking `exists()` and then writing left a window both runners walked through).
    """
    for number in range(1, 10_000):
        stem = name if number == 1 else f"{name}-{number}"
        sidecar = folder / f"{stem}.json"
        if _owner(sidecar) == job_id:
            return stem  # this job published before (a resumed or repeated finish): replace its files
        if any(folder.glob(f"{glob.escape(stem)}.*safetensors")):
            continue  # an imported LoRA without a sidecar
        try:
            fd = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        try:
            os.write(fd, json.dumps({"name": stem, "job": job_id, "publishing": True}).encode("utf-8"))
        finally:
            os.close(fd)
        return stem
    raise JobError(f"has 10,000 LoRAs named {name!r} already", where=str(folder),
                   fix="Pick another export.name, or tidy the library.")


def _owner(sidecar: Path) -> str | None:
    """The job a library sidecar belongs to, or None (missing, unreadable)."""
    try:
        return json.loads(sidecar.read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        return None
