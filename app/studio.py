"""What every tab shares: the home layout, the job supervisor, the adapter pool and the GPU-sharing rule.

    studio = Studio(home=Path("~/.lora-studio").expanduser(), base_model="tiny")
    studio.supervisor.submit(config)          # trainer.jobs
    with studio.preview() as pool:            # trainer.generate.AdapterPool, one preview at a time
        pool.generate("a cat", strengths={"mine": 1.0})

GPU sharing: training always wins. Previews are queued (one at a time, behind a lock). While a job is
running the pool is kept off the GPU (previews run on the CPU, slower but safe), and a pool that sits on
the GPU is released before a job is submitted, so a preview never pushes a training job out of memory.
With no job running, previews use the GPU; an idle pool gives its memory back after `idle_s` seconds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.security import MAX_UPLOAD_FILES, MAX_UPLOAD_MB, inside, safe_name
from trainer.jobs.paths import Home

ACTIVE = ("queued", "running")


@dataclass
class Studio:
    home: Path
    """`<home>`: datasets, loras, jobs and the job database live here."""
    base_model: str = "tiny"
    """Base model for new jobs and for the preview pool."""
    idle_s: float = 300.0
    """Seconds without a preview after which the pool frees its memory."""
    max_upload_mb: int = MAX_UPLOAD_MB
    """Largest single uploaded file, in MB (gradio answers 413 above it)."""
    max_upload_files: int = MAX_UPLOAD_FILES
    """Most files in one upload."""
    gpu: str | None = "auto"
    """Device previews use while no job trains: `auto` (`cuda` when PyTorch sees a GPU), a device such as
    `cuda:1`, or None for the CPU only."""
    lora_stamps: dict[str, int] = field(default_factory=dict)
    """Modification time of each LoRA file as the pool loaded it (a changed file is loaded again)."""
    _supervisor: Any = None
    _pool: Any = None
    _pool_device: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_used: float = 0.0

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        for folder in (self.datasets_dir, self.loras_dir, self.home / ".gradio"):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def datasets_dir(self) -> Path:
        return Home(self.home).datasets

    @property
    def upload_dir(self) -> Path:
        """Where gradio puts uploads (`GRADIO_TEMP_DIR`, `<home>/.gradio` unless the user set it)."""
        return Path(os.environ.get("GRADIO_TEMP_DIR") or self.home / ".gradio").resolve()

    @property
    def loras_dir(self) -> Path:
        return Home(self.home).loras

    def dataset_path(self, name: str) -> Path:
        """The folder of dataset `name`, refusing names that are not plain or escape `<home>/datasets`."""
        return inside(self.datasets_dir, safe_name(name, what="dataset name"))

    def dataset_names(self) -> list[str]:
        return sorted(p.name for p in self.datasets_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def lora_files(self) -> dict[str, Path]:
        """Library LoRAs by name: the kohya-key file, or its `.peft` twin where diffusers cannot read the kohya
        file (LoHa, LoKr and DoRA runs say so in its metadata); the twins are the same LoRA."""
        from safetensors import safe_open  # the header alone, without importing torch

        files = sorted(self.loras_dir.glob("*.safetensors"))
        library = {}
        for path in files:
            if path.name.endswith(".peft.safetensors"):
                continue
            twin = path.with_name(path.name.removesuffix(".safetensors") + ".peft.safetensors")
            try:
                with safe_open(str(path), "np") as handle:
                    unreadable = "lora_studio_diffusers_note" in (handle.metadata() or {})
            except Exception:  # safetensors' own error types: the pool's load names what is wrong with the file
                unreadable = False
            library[path.name.removesuffix(".safetensors")] = twin if unreadable and twin.is_file() else path
        return library

    @property
    def supervisor(self) -> Any:
        if self._supervisor is None:
            from trainer.jobs import Supervisor

            self._supervisor = Supervisor(self.home, max_concurrent=1)
        return self._supervisor

    def training_running(self, jobs: list[dict] | None = None) -> bool:
        jobs = self.supervisor.list() if jobs is None else jobs
        return any(job["status"] == "running" for job in jobs)

    def preview_device(self, jobs: list[dict] | None = None) -> str:
        """CPU while a job of this home runs (the GPU is the job's); otherwise the GPU when there is one."""
        if self.training_running(jobs):
            return "cpu"
        if self.gpu == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.gpu or "cpu"

    def preview_threads(self, jobs: list[dict] | None = None) -> int:
        """CPU threads a preview may use: the cores this process may run on, less those the running jobs
        train on (`train.num_threads` of each, 0 meaning every core), and at least one. Two sets of torch
        threads on the same cores spin against each other and slow both many times over."""
        jobs = self.supervisor.list() if jobs is None else jobs
        cores = usable_cores()
        taken = sum(job_threads(self.supervisor.files(job["id"]).config, cores)
                    for job in jobs if job["status"] == "running")
        return max(1, cores - taken)

    @contextlib.contextmanager
    def preview(self) -> Iterator[Any]:
        """The adapter pool, on the device the GPU-sharing rule allows, held by one caller at a time, running on
        the CPU threads the running jobs leave free (`preview_threads`) for as long as the caller holds it."""
        import torch

        with self._lock:
            jobs = self.supervisor.list()
            threads_before = torch.get_num_threads()
            torch.set_num_threads(self.preview_threads(jobs))
            device = self.preview_device(jobs)
            if self._pool is None or device != self._pool_device:
                self._release_locked()
                from trainer.generate import AdapterPool

                self._pool = AdapterPool(self.base_model, device=device)
                self._pool_device = device
            self._last_used = time.monotonic()
            try:
                yield self._pool
            finally:
                self._last_used = time.monotonic()
                torch.set_num_threads(threads_before)  # the rest of the process keeps its own count

    def pool_device(self) -> str | None:
        """Where the preview pool lives now (None: not loaded)."""
        return self._pool_device

    def yield_gpu(self, jobs: list[dict] | None = None) -> bool:
        """Free the pool's GPU memory when a job is (about to be) training; True when it did.

        Called before a job is submitted and on every job-list refresh, so a pool that was on the GPU
        when no job ran never competes with a job that starts later. Waits for a running preview.
        """
        if self._pool_device in (None, "cpu") or (jobs is not None and not self.training_running(jobs)):
            return False
        with self._lock:
            self._release_locked()
        return True

    def release_if_idle(self) -> bool:
        """Free the pool's memory when no preview ran for `idle_s` seconds; True when it was freed."""
        if self._pool is None or time.monotonic() - self._last_used < self.idle_s:
            return False
        with self._lock:
            self._release_locked()
        return True

    def _release_locked(self) -> None:
        pool, self._pool, self._pool_device = self._pool, None, None
        self.lora_stamps.clear()
        if pool is None:
            return
        if hasattr(pool, "release"):
            pool.release()
        del pool
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the cached blocks back so a training job can use them

    def start_idle_watch(self, every_s: float = 30.0) -> threading.Thread:
        """A daemon thread that calls `release_if_idle` every `every_s` seconds."""

        def watch() -> None:
            while True:
                time.sleep(every_s)
                self.release_if_idle()

        thread = threading.Thread(target=watch, name="pool-idle-watch", daemon=True)
        thread.start()
        return thread


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def job_threads(config_path: Path, cores: int) -> int:
    """The CPU threads a job trains on: its `train.num_threads` (0: every core; unreadable: the default, 1)."""
    import tomllib

    try:
        with open(config_path, "rb") as handle:
            threads = int(tomllib.load(handle).get("train", {}).get("num_threads", 1))
    except (OSError, ValueError, tomllib.TOMLDecodeError):
        threads = 1
    return cores if threads <= 0 else threads
