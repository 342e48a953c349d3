"""The supervisor: queues jobs, starts each as a detached runner process, stops, resumes and reconciles them.

    sup = Supervisor()                       # <home> from LORA_STUDIO_HOME or ~/.lora-studio
    job_id = sup.submit(load_config("run.toml"))
    sup.show(job_id)["status"]               # queued -> running -> done | failed | stopped | interrupted
    sup.stop(job_id)                         # graceful: the loop saves a checkpoint and ends `stopped`

The supervisor holds no state of its own: the job table and the job folders are the truth, so any
number of supervisors (the web server, a CLI call) may come and go while runners keep training.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trainer
from trainer.config import TrainConfig, save_config, validate
from trainer.errors import DatasetError, JobError
from trainer.fileio import atomic_write_bytes, disk_error
from trainer.jobs import process
from trainer.jobs.events import EventLog, heartbeat_age, last_event, read_events, tail_events
from trainer.jobs.paths import Home, JobFiles, default_home
from trainer.jobs.resume_settings import apply_memory_settings
from trainer.jobs.store import DiskFullError, JobStore

# A claimed job whose runner never recorded a pid after this long lost its supervisor mid-spawn.
SPAWN_GRACE_S = 60.0
RESUMABLE = ("stopped", "interrupted", "failed")


class Supervisor:
    """Commands and reads jobs under one home; see the module docstring."""

    def __init__(self, home: Path | str | None = None, max_concurrent: int | None = None):
        root = Path(home).expanduser().resolve() if home else default_home()
        self.home = Home(root).ensure()
        self.store = JobStore(self.home.db)
        self._max_concurrent = max_concurrent
        self._children: dict[str, subprocess.Popen] = {}
        self.upkeep_error: str | None = None
        """Why the last reconcile/pump could not write (a full disk), or None."""
        self._upkeep()

    @property
    def max_concurrent(self) -> int:
        """This supervisor's limit, else the home's saved setting, else 1 (one job per GPU)."""
        if self._max_concurrent is not None:
            return self._max_concurrent
        return int(self.store.get_setting("max_concurrent", 1))

    def save_max_concurrent(self, value: int) -> None:
        """Remember the limit in the home, for every later supervisor that is not given one."""
        if value < 1:
            raise JobError(f"must be >= 1, got {value}", where="--max-concurrent")
        self.store.set_setting("max_concurrent", value)
        self._max_concurrent = None

    # -- commands ---------------------------------------------------------------------------------

    def submit(self, config: TrainConfig, request_key: str | None = None) -> str:
        """Queue a job and start it when a slot is free; a repeated `request_key` returns the same job."""
        if request_key is not None:
            existing = self.store.find(request_key)
            if existing is not None:
                return existing
        validate(config)
        check_dataset_exists(config)
        job_id = secrets.token_hex(4)
        files = self.files(job_id)
        files.dir.mkdir(parents=True)
        config = pin_paths(config, files)
        save_config(config, files.config)
        # The config is on disk before the row exists, so a runner never starts without it.
        got = self.store.insert(job_id, config.export.name, config.train.steps, request_key=request_key)
        if got != job_id:  # a twin request won the race
            shutil.rmtree(files.dir, ignore_errors=True)
            return got
        EventLog(files.events).write({"kind": "queued"})
        self.pump()
        return job_id

    def pump(self) -> list[str]:
        """Start queued jobs, oldest first, while fewer than `max_concurrent` run; returns the started ids."""
        started = []
        while (job := self.store.claim_next(self.max_concurrent)) is not None:
            self._spawn(job["id"])
            started.append(job["id"])
        return started

    def stop(self, job_id: str, force: bool = False) -> dict[str, Any]:
        """Graceful: raise the stop flag (the loop saves a checkpoint, ends `stopped`). Force: kill it now."""
        self._check(self.store.get(job_id))
        job = self.store.get(job_id)
        files = self.files(job_id)
        if job["status"] == "queued":
            self.store.update(job_id, status="stopped", only_if=("queued",))
        elif job["status"] != "running":
            raise JobError(f"is {job['status']}, not running", where=f"job {job_id}",
                           fix="Only queued or running jobs can be stopped.")
        elif not force:
            atomic_write_bytes(files.stop_flag, b"stop\n")
        else:
            atomic_write_bytes(files.stop_flag, b"stop\n")  # in case the runner has not recorded its pid yet
            if job["pid"] and process.kill_group(job["pid"], job["pid_start"]):
                self._leave_no_trace(files, job["pid"], job["pid_start"])
            self._reap(job_id)
            if self.store.update(job_id, status="stopped", only_if=("running",)):
                EventLog(files.events).write({"kind": "stopped", "forced": True})
            self.pump()
        return self.show(job_id)

    def resume(self, job_id: str, settings: dict[str, Any] | None = None) -> str:
        """Queue a stopped, interrupted or failed job again; it continues from its newest checkpoint.

        `settings` (dotted field: value) change memory settings first, such as those an out-of-memory failure
        suggested (`show(job_id)["suggested"]`); anything else is refused (trainer/jobs/resume_settings.py).
        The queued event lists what changed, as [old, new]."""
        job = self.store.get(job_id)
        if job["status"] not in RESUMABLE:
            fix = ("Submit a new job to train further." if job["status"] == "done"
                   else "Wait for it to finish or stop it first.")
            raise JobError(f"is {job['status']}; only stopped, interrupted or failed jobs resume",
                           where=f"job {job_id}", fix=fix)
        files = self.files(job_id)
        saved = files.config.read_bytes() if settings else b""
        changed = apply_memory_settings(files, job_id, settings) if settings else {}
        files.stop_flag.unlink(missing_ok=True)
        if self.store.update(job_id, status="queued", error=None, only_if=RESUMABLE):
            extra = {"changed": changed} if changed else {}
            EventLog(files.events).write({"kind": "queued", "resume": True, **extra})
        elif changed:  # another command resumed (or removed) it meanwhile: its run keeps the config it read
            atomic_write_bytes(files.config, saved)
            raise JobError("was resumed by another command meanwhile; its settings were left as they were",
                           where=f"job {job_id}", fix="Stop it and resume it with the settings again.")
        self.pump()
        return job_id

    def remove(self, job_id: str) -> None:
        """Delete a job that is not running, with its folder; LoRAs already in the library stay."""
        job = self.store.get(job_id)
        if job["status"] == "running":
            raise JobError("is running", where=f"job {job_id}",
                           fix=f"Stop it first: `lora-studio jobs stop {job_id}` (or --force).")
        self.store.delete(job_id)
        shutil.rmtree(self.files(job_id).dir, ignore_errors=True)

    def reconcile(self) -> list[str]:
        """Mark `running` jobs whose runner is gone (or whose pid now names another process) `interrupted`."""
        for job_id in [j for j, child in self._children.items() if child.poll() is not None]:
            del self._children[job_id]  # exited (and reaped): nothing left to hold on to
        return [job["id"] for job in self.store.all() if self._check(job)]

    def _check(self, job: dict[str, Any]) -> bool:
        """Reconcile one job row; True if it was just marked interrupted."""
        if job["status"] != "running":
            return False
        self._reap(job["id"])
        if job["pid"] is None:
            gone = time.time() - job["updated"] > SPAWN_GRACE_S
        else:
            gone = not process.is_alive(job["pid"], job["pid_start"])
        # Only this attempt: a runner that finished cleanly has already written done/failed/stopped,
        # and a job resumed meanwhile has another pid.
        if gone and self.store.mark_interrupted(job["id"], job["pid"]):
            EventLog(self.files(job["id"]).events).write({"kind": "interrupted", "pid": job["pid"]})
            return True
        return False

    # -- reads ------------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every job, oldest first, after reconciling and starting what can start."""
        self._upkeep()
        return [self._describe(job) for job in self.store.all()]

    def show(self, job_id: str) -> dict[str, Any]:
        """One job (see the keys in `_describe`), its own liveness checked first."""
        job = self.store.get(job_id)
        if self._upkeep(lambda: self._check(job)):
            job = self.store.get(job_id)
        return self._describe(job)

    def events(self, job_id: str, since: int = 0) -> list[dict[str, Any]]:
        self.store.get(job_id)
        return read_events(self.files(job_id).events, since)

    def log_tail(self, job_id: str, lines: int = 50) -> str:
        self.store.get(job_id)
        path = self.files(job_id).log
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the job is no longer queued or running (reconciling meanwhile); returns show()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reconcile()
            self.pump()
            job = self.show(job_id)
            if job["status"] not in ("queued", "running"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"is still {job['status']} after {timeout:.0f} s", where=f"job {job_id}")
            time.sleep(poll)

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.home.job_dir(job_id))

    # -- internals --------------------------------------------------------------------------------

    def _upkeep(self, work: Any = None) -> Any:
        """Reconcile and start queued jobs (or run `work`); on a full disk skip the writes and say why in
        `upkeep_error`: reading the jobs must keep working while the user frees space."""
        try:
            result = work() if work else (self.reconcile(), self.pump())
        except (DiskFullError, OSError) as err:
            if isinstance(err, OSError) and disk_error(err, self.home.root) is err:
                raise
            self.upkeep_error = str(err)
            return None
        self.upkeep_error = None
        return result

    def _describe(self, job: dict[str, Any]) -> dict[str, Any]:
        files = self.files(job["id"])
        recent = tail_events(files.events)
        progress = last_event(recent, "progress") or {}
        failed = last_event(recent, "failed") or {}
        checked = last_event(recent, "validation", "done") or {}  # validation: the best step so far
        running = job["status"] == "running"
        # The DB has the step of the last checkpoint or the finish; the log has the live one.
        step = job["step"] if job["status"] == "done" else progress.get("step", job["step"])
        return {
            "id": job["id"],
            "name": job["name"],
            "status": job["status"],
            "step": step,
            "total_steps": job["total_steps"],
            "loss": progress.get("loss", job["loss"]) if running else (job["loss"] or progress.get("loss")),
            "lr": progress.get("lr"),
            "it_per_s": progress.get("it_per_s") if running else None,
            "eta_s": progress.get("eta_s") if running else (0.0 if job["status"] == "done" else None),
            "validation_loss": (last_event(recent, "validation") or {}).get("loss"),
            "best_step": checked.get("best_step") or None,
            "pid": job["pid"],
            "created": job["created"],
            "updated": job["updated"],
            "outputs": job["outputs"],
            "library": job["library"],
            "library_name": Path(job["library"][-1]).stem if job["library"] else None,
            "error": job["error"],
            "advice": failed.get("advice") if job["status"] == "failed" else None,
            # out of memory: the settings that fit, for resume(job_id, settings=...)
            "suggested": (failed.get("suggested") or None) if job["status"] == "failed" else None,
            "stopping": running and files.stop_flag.exists(),
            "heartbeat_age_s": heartbeat_age(files.heartbeat) if running else None,
            "attempts": job["attempts"],
            "dir": str(files.dir),
        }

    def _spawn(self, job_id: str) -> None:
        files = self.files(job_id)
        files.stop_flag.unlink(missing_ok=True)
        command = [sys.executable, "-m", "trainer.jobs.runner", "--home", str(self.home.root),
                   "--job", job_id]
        env = dict(os.environ)
        # The runner imports `trainer` from wherever this process did, installed or a source checkout.
        source_root = str(Path(trainer.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH", "")) if p)
        try:
            with open(files.log, "ab") as log:
                child = subprocess.Popen(
                    command, cwd=files.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                )
        except OSError as err:
            message = f"could not start the runner process ({err})"
            self.store.update(job_id, status="failed", error=message, only_if=("running",))
            EventLog(files.events).write({"kind": "failed", "error": message,
                                          "advice": "Check that the home folder is writable and resume."})
            return
        self._children[job_id] = child
        process.adopt(child)  # reaped when it exits, even if this supervisor never looks at the job again
        self.store.update(job_id, pid=child.pid, pid_start=process.start_time(child.pid),
                          only_if=("running",))

    @staticmethod
    def _leave_no_trace(files, pid: int, started: int | None) -> None:
        """After a kill: the stop flag and the runner's disk reserve, which its own exit would have removed."""
        deadline = time.monotonic() + 5
        while process.is_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        files.stop_flag.unlink(missing_ok=True)
        files.reserve.unlink(missing_ok=True)

    def _reap(self, job_id: str) -> None:
        """Collect our own exited runner so it does not linger as a zombie that looks alive to kill(0)."""
        child = self._children.get(job_id)
        if child is not None and child.poll() is not None:
            del self._children[job_id]


def check_dataset_exists(config: TrainConfig) -> None:
    """Refuse a job whose dataset folder is not there now: it would only fail once its turn came."""
    folder = Path(config.data.path).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{what} (data.path)", where=str(folder.resolve()),
                           fix="Import the dataset first (the Datasets tab or `lora-studio import-dataset`), "
                               "or point data.path at its folder.")


def pin_paths(config: TrainConfig, files: JobFiles) -> TrainConfig:
    """A copy of the config whose local paths are absolute and whose output goes into the job folder.

    The runner works in the job folder, so a relative `data.path` must be resolved against the
    directory the user submitted from.
    """
    config = copy.deepcopy(config)
    config.data.path = str(Path(config.data.path).expanduser().resolve())
    for field in ("cache_dir", "class_dir", "validation_dir"):
        if getattr(config.data, field):
            setattr(config.data, field, str(Path(getattr(config.data, field)).expanduser().resolve()))
    for field in ("base_model", "base_config"):
        value = getattr(config.model, field)
        if value and Path(value).expanduser().exists():
            setattr(config.model, field, str(Path(value).expanduser().resolve()))
    config.export.output_dir = str(files.output)
    return config
