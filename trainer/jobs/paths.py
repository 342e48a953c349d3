"""Where a LoRA Studio home keeps its state on disk, in one place.

    layout = Home(default_home())
    layout.job_dir("a1b2c3d4") / "events.jsonl"

The home is `--home`, else `LORA_STUDIO_HOME`, else `~/.lora-studio`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "LORA_STUDIO_HOME"


def default_home() -> Path:
    """`LORA_STUDIO_HOME` when set, else `~/.lora-studio`."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else Path.home() / ".lora-studio"


@dataclass(frozen=True)
class Home:
    """The folders and files of one home; nothing here touches the disk but `ensure()`."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "studio.sqlite"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def loras(self) -> Path:
        return self.root / "loras"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def ensure(self) -> Home:
        for folder in (self.root, self.jobs, self.loras, self.datasets):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class JobFiles:
    """The files of one job folder (`<home>/jobs/<id>/`)."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def events(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.dir / "runner.log"

    @property
    def heartbeat(self) -> Path:
        return self.dir / "heartbeat"

    @property
    def stop_flag(self) -> Path:
        return self.dir / "stop"

    @property
    def reserve(self) -> Path:
        """Disk space the runner sets aside to report a full disk (trainer/jobs/runner.py)."""
        return self.dir / ".reserve"

    @property
    def output(self) -> Path:
        return self.dir / "output"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"
