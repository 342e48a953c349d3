"""The runner process of one job: trains it and writes everything a UI needs to the job folder.

    python -m trainer.jobs.runner --home ~/.lora-studio --job a1b2c3d4

Started by the supervisor, detached in a session of its own, with stdout/stderr in `runner.log`. It
records its pid and start time, writes `events.jsonl` and a heartbeat, stops when the `stop` file
appears (or on SIGTERM), continues from the newest complete checkpoint, and on success copies the
LoRA into the library. The final status (done, failed, stopped) is written before it exits; a runner
that dies without writing one is found by the supervisor's reconcile and marked interrupted. On its
way out it starts the next queued job, so a queue submitted from a terminal drains with no server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import traceback
from pathlib import Path
from typing import Any

from trainer.config import load_config
from trainer.errors import StudioError, TrainingError
from trainer.fileio import disk_error
from trainer.jobs import process
from trainer.jobs.events import EventLog, Heartbeat, read_events
from trainer.jobs.library import publish
from trainer.jobs.log_lines import describe
from trainer.jobs.paths import Home, JobFiles
from trainer.jobs.quiet import quiet_libraries
from trainer.jobs.store import JobStore

RESERVE_BYTES = 1 << 20
"""Disk space a runner holds while it trains, released to record a failure when the disk fills up."""


class Runner:
    """One attempt at one job: the callbacks `train()` gets, and the bookkeeping around it."""

    def __init__(self, home: Home, job_id: str):
        self.home = home
        self.job_id = job_id
        self.store = JobStore(home.db)
        self.files = JobFiles(home.job_dir(job_id))
        self.log = EventLog(self.files.events)
        self.failed_written = False
        self.terminated = False
        self.reserve = self.files.reserve

    def should_stop(self) -> bool:
        return self.terminated or self.files.stop_flag.exists()

    def on_event(self, event: Any) -> None:
        try:
            record = self.log.write(event.to_dict())
            self.failed_written |= event.kind == "failed"
            print(describe(record), flush=True)
        except OSError as err:  # events.jsonl and runner.log sit on the job's disk
            if event.kind == "failed":  # the failure itself is recorded by fail(), once there is room
                return
            raise disk_error(err, self.files.events) from err
        if event.kind == "checkpoint":
            # The step in the table is a convenience (the log has it too): a database locked for
            # longer than the store's timeout must not fail the training run.
            with contextlib.suppress(sqlite3.Error):
                self.store.update(self.job_id, step=record.get("step", 0))

    def run(self) -> int:
        """Train, record the outcome, and return the process exit code."""
        from trainer.checkpoint import latest_checkpoint
        from trainer.loop import train
        from trainer.precision import pin_threads

        me = os.getpid()
        if not self.store.update(self.job_id, pid=me, pid_start=process.start_time(me), only_if=("running",)):
            # Stopped (or removed) between the supervisor's claim and this start: nothing to do.
            print(f"job {self.job_id}: no longer running; exiting without training", flush=True)
            return 0
        self.hold_reserve()
        config = load_config(self.files.config)
        resume_from = latest_checkpoint(self.files.dir)  # also clears checkpoints a kill left half-written
        self.log.write({"kind": "runner", "pid": me, "resume_from": resume_from and str(resume_from)})
        print(f"job {self.job_id}: started (pid {me}), resume from {resume_from or 'scratch'}", flush=True)
        try:
            if config.train.num_processes > 1 or config.train.gpus:  # each rank pins its own threads (the CLI)
                result = self.train_distributed(config, resume_from)
            else:
                # From the config, not inherited from whichever process started (or resumed) this runner.
                pin_threads(config.train.num_threads)
                result = train(config, on_event=self.on_event, should_stop=self.should_stop,
                               resume_from=resume_from, workdir=self.files.dir)
        except Exception as err:  # every failure becomes a readable `failed` status
            self.fail(err, trace=True)
            return 1
        outputs = [str(p) for p in result.outputs]
        if result.stopped:
            self.log.write({"kind": "stopped", "step": result.step})
            self.store.update(self.job_id, status="stopped", step=result.step, loss=result.final_loss,
                              outputs=outputs, only_if=("running",))  # the LoRA so far: `jobs show` lists it
            return 0
        library = [str(p) for p in publish(self.home, self.job_id, result.outputs, config, result.step)]
        if library:  # the name it got (`jobs show` has it too): `cats-2` when another job's `cats` was there
            with contextlib.suppress(OSError):  # a full runner.log must not fail a published job
                print(f"published to the library as {Path(library[-1]).stem}", flush=True)
        self.store.update(self.job_id, status="done", step=result.step, loss=result.final_loss,
                          outputs=outputs, library=library, only_if=("running",))
        return 0

    def train_distributed(self, config, resume_from):
        """Train on several processes through accelerate; rank 0 appends its events to this job's log."""
        from trainer import distributed
        from trainer.loop import Result

        seen = len(read_events(self.files.events))
        gpus = config.train.gpus or None
        code = distributed.launch_train(self.files.config, config.train.num_processes, gpus=gpus,
                                        resume_from=resume_from, workdir=self.files.dir,
                                        events_path=self.files.events, stop_file=self.files.stop_flag)
        events = read_events(self.files.events, since=seen)
        finished = [e for e in events if e.get("kind") in ("done", "failed")]
        self.failed_written = any(e.get("kind") == "failed" for e in finished)
        if code != 0 or not finished or finished[-1]["kind"] == "failed":
            last = finished[-1] if finished else {}
            raise TrainingError(last.get("error") or f"the training processes exited with code {code}",
                                fix=last.get("advice") or "Read the job's log for the traceback.")
        losses = [e["loss"] for e in events if e.get("kind") == "progress" and e.get("loss") is not None]
        done = finished[-1]
        return Result([Path(p) for p in done["outputs"]], done["step"], losses[-1] if losses else float("nan"),
                      bool(done.get("stopped")), losses)

    def fail(self, err: BaseException, trace: bool = False) -> None:
        message, advice = explain(err)
        self.release_reserve()  # a full disk is the likeliest cause: the reserve makes room to say so
        with contextlib.suppress(OSError):  # runner.log is on that disk too
            if trace:
                traceback.print_exc()
            print(f"job {self.job_id} failed: {message}", flush=True)
        if not self.failed_written:
            try:
                self.log.write({"kind": "failed", "error": message, "advice": advice})
            except OSError as log_err:  # the disk may be the very thing that is full
                with contextlib.suppress(OSError):
                    print(f"could not write the failed event: {log_err}", file=sys.stderr, flush=True)
        try:
            self.store.update(self.job_id, status="failed", error=message, only_if=("running",))
        except StudioError as store_err:  # still no room: reconcile will find it interrupted, resumable
            with contextlib.suppress(OSError):
                print(f"could not record the failure: {store_err}", file=sys.stderr, flush=True)

    def hold_reserve(self) -> None:
        """Set aside RESERVE_BYTES beside the job, freed on failure so a full disk can still be reported."""
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:  # already full, or no fallocate here: fail() still tries without it
            self.release_reserve()

    def release_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self.reserve.unlink(missing_ok=True)


def explain(err: BaseException) -> tuple[str, str]:
    """The one-line error and the advice shown for a failed job."""
    if isinstance(err, StudioError):
        return err.message, err.fix or ""
    if isinstance(err, MemoryError):
        return "ran out of memory", "Lower data.resolution or train.batch_size and resume."
    return f"{type(err).__name__}: {err}", "See runner.log in the job folder for the traceback."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.jobs.runner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path, help="the LoRA Studio home folder")
    parser.add_argument("--job", required=True, help="the job id")
    args = parser.parse_args(argv)
    runner = Runner(Home(args.home.resolve()), args.job)

    def terminate(signum: int, frame: Any) -> None:
        # `docker stop` or a shutdown: stop like the Stop button, so the job ends stopped and resumable.
        runner.terminated = True

    signal.signal(signal.SIGTERM, terminate)
    quiet_libraries()
    heartbeat = Heartbeat(runner.files.heartbeat).start()
    try:
        code = runner.run()
    except Exception as err:  # a failure outside train(): a bad config file, an unreadable checkpoint
        runner.fail(err, trace=True)
        code = 1
    finally:
        heartbeat.stop()
        runner.release_reserve()
    if not runner.terminated:
        start_next(runner.home)
    return code


def start_next(home: Home) -> None:
    """Start the next queued job now that this slot is free, so the queue moves with no server running.

    Not after SIGTERM: a shutting-down machine should not start new work.
    """
    from trainer.jobs.supervisor import Supervisor

    try:
        sup = Supervisor(home.root)  # a starting supervisor reconciles, then starts what the limit allows
        running = [job["id"] for job in sup.store.all() if job["status"] == "running"]
    except Exception:  # the finished job is recorded; a supervisor's next look will start the queue
        traceback.print_exc()
        return
    if running:
        print(f"slot freed; running now: {', '.join(running)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
