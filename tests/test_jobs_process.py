"""Jobs with real runner processes: the CLI, queueing, stop, and the faults a job must survive.

Every job here trains the embedded tiny model for a few steps at 64 px in its own runner process.
The runners get OMP_NUM_THREADS=1: on a shared 2-core box, torch's spinning worker threads make a
step up to 20x slower when other processes compete for the cores.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from trainer.config import load_config, save_config
from trainer.jobs import Supervisor, process

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
WAIT_S = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread_runners():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def job_config(tmp: Path, name: str = "cats", data: str = str(ROOT / "datasets" / "example"), **overrides):
    """The test run: the tiny model, the example dataset, 64 px, a checkpoint every 3 steps."""
    values = {"data.path": data, "data.resolution": 64, "network.rank": 4,
              "train.steps": STEPS, "train.save_every": 3, "export.name": name, "export.dtype": "float32"}
    values.update(overrides)
    config = load_config(None, values)
    return config, save_config(config, tmp / f"{name}.toml")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "trainer.cli", "jobs", *args, "--home", str(home)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S, check=True)


def wait_for(what: str, predicate, timeout: float = WAIT_S, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def event_of(sup: Supervisor, job_id: str, kind: str, since: int = 0, **match):
    """The first event of `kind` (with the given field values) from index `since`, or None."""
    for event in sup.events(job_id, since):
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event
    return None


def progress_at_least(sup: Supervisor, job_id: str, step: int, since: int = 0):
    return any(e["kind"] == "progress" and e["step"] >= step for e in sup.events(job_id, since))


def complete_checkpoints(job_dir: Path) -> list[str]:
    root = job_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if (p / "COMPLETE").is_file()) if root.is_dir() else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Through the CLI: job A (long) runs, B queues behind it; A is stopped gracefully, B trains to done.

    Every CLI call is its own short-lived supervisor, so the runners outlive the process that started them.
    """
    tmp = tmp_path_factory.mktemp("lifecycle")
    home = tmp / "home"
    # The dataset path is relative, as users write it: submit resolves it against the CLI's directory.
    _, long_toml = job_config(tmp, name="long", data="datasets/example",
                              **{"train.steps": 500, "train.save_every": 0})
    _, b_toml = job_config(tmp, data="datasets/example")
    a = json.loads(cli(home, "submit", str(long_toml), "--json").stdout)
    b = json.loads(cli(home, "submit", str(b_toml), "--json", "--request-key", "click-1").stdout)
    again = json.loads(cli(home, "submit", str(b_toml), "--json", "--request-key", "click-1").stdout)
    sup = Supervisor(home)  # a supervisor that did not start A: as after a web server restart
    seen = {"a_running": sup.show(a["id"]), "b_queued": sup.show(b["id"])}
    wait_for("job A's first step", lambda: progress_at_least(sup, a["id"], 1))
    seen["a_alive"] = process.is_alive(sup.show(a["id"])["pid"], sup.store.get(a["id"])["pid_start"])
    seen["stopping"] = json.loads(cli(home, "stop", a["id"], "--json").stdout)  # returns at once
    # No supervisor acts from here on (the store is read directly): A's runner starts B as it ends.
    wait_for("A's runner to start B", lambda: sup.store.get(b["id"])["status"] != "queued")
    stopped = sup.show(a["id"])
    done = sup.wait(b["id"], timeout=WAIT_S)
    return {"home": home, "a": a, "b": b, "again": again, "seen": seen, "stopped": stopped, "done": done,
            "sup": sup}


def test_cli_submit_queue_restart_graceful_stop_and_done(finished):
    a, b, seen, home = finished["a"], finished["b"], finished["seen"], finished["home"]
    assert a["status"] == "running" and b["status"] == "queued"
    assert finished["again"]["id"] == b["id"]  # the same request twice is one job
    assert seen["a_running"]["status"] == "running" and seen["a_alive"]
    assert seen["b_queued"]["status"] == "queued"  # one job at a time by default

    assert seen["stopping"]["status"] == "running" and seen["stopping"]["stopping"]
    stopped = finished["stopped"]
    assert stopped["status"] == "stopped" and not stopped["stopping"]
    a_dir = Path(stopped["dir"])
    assert f"slot freed; running now: {b['id']}" in (a_dir / "runner.log").read_text()
    assert complete_checkpoints(a_dir) == [f"step-{stopped['step']}"]  # the stop itself was saved
    assert not process.is_alive(stopped["pid"], None)
    shown = json.loads(cli(home, "show", a["id"], "--json").stdout)  # a stopped job lists the LoRA it saved
    assert {Path(p).name for p in shown["outputs"]} >= {"long.safetensors", "long.peft.safetensors"}
    assert all(Path(p).is_file() for p in shown["outputs"])

    show = json.loads(cli(home, "show", b["id"], "--json").stdout)
    assert show["status"] == "done" and (show["step"], show["total_steps"]) == (STEPS, STEPS)
    assert {"id", "name", "status", "step", "total_steps", "loss", "eta_s", "pid", "outputs"} <= set(show)
    outputs = [Path(p) for p in show["outputs"]]
    assert {p.name for p in outputs} >= {"cats.safetensors", "cats.peft.safetensors", "config.toml"}
    assert all(p.is_file() and p.parent == Path(show["dir"]) / "output" for p in outputs)
    library = home / "loras"
    assert sorted(p.name for p in library.iterdir()) == ["cats.json", "cats.peft.safetensors", "cats.safetensors"]
    assert load_file(library / "cats.safetensors").keys() == load_file(Path(show["dir"]) / "output" /
                                                                       "cats.safetensors").keys()
    sidecar = json.loads((library / "cats.json").read_text())
    assert (sidecar["job"], sidecar["steps"]) == (b["id"], STEPS)
    assert sidecar["config"]["data"]["path"] == str(ROOT / "datasets" / "example")

    listed = {job["id"]: job["status"] for job in json.loads(cli(home, "list", "--json").stdout)}
    assert listed == {a["id"]: "stopped", b["id"]: "done"}
    cli(home, "rm", a["id"])
    assert not a_dir.exists() and [j["id"] for j in json.loads(cli(home, "list", "--json").stdout)] == [b["id"]]
    logs = cli(home, "logs", b["id"], "--follow").stdout  # returns once the job has ended
    assert f"step {STEPS}/{STEPS}" in logs and "checkpoint" in logs
    kinds = [e["kind"] for e in finished["sup"].events(b["id"])]
    assert kinds[:3] == ["queued", "runner", "started"] and kinds[-1] == "done"
    assert "progress" in kinds and "checkpoint" in kinds


def test_sigkill_mid_run_is_interrupted_and_resume_matches_an_uninterrupted_run(finished, tmp_path):
    sup = Supervisor(tmp_path / "home")
    config, _ = job_config(tmp_path)
    job_id = sup.submit(config)
    wait_for("a step after the first checkpoint",
             lambda: event_of(sup, job_id, "checkpoint", step=3) and progress_at_least(sup, job_id, 4))
    os.killpg(sup.show(job_id)["pid"], signal.SIGKILL)
    wait_for("the kill to be noticed", lambda: sup.list()[0]["status"] == "interrupted")
    killed_at = sup.show(job_id)["step"]
    assert killed_at < STEPS

    seen = len(sup.events(job_id))
    assert sup.resume(job_id) == job_id
    job = sup.wait(job_id, timeout=WAIT_S)
    assert job["status"] == "done", job["error"]
    resumed = event_of(sup, job_id, "runner", since=seen)
    resumed_step = int(Path(resumed["resume_from"]).name.removeprefix("step-"))
    assert 3 <= resumed_step <= killed_at  # it went back to a checkpoint, not to step 0
    assert event_of(sup, job_id, "started", since=seen)["start_step"] == resumed_step

    ours = load_file(Path(job["dir"]) / "output" / "cats.safetensors")
    reference = load_file(Path(finished["done"]["dir"]) / "output" / "cats.safetensors")
    assert ours.keys() == reference.keys()
    worst = max((ours[k] - reference[k]).abs().max().item() for k in ours)
    assert worst <= 1e-5, f"resumed LoRA differs from the uninterrupted one by {worst}"


def test_sigkill_during_a_checkpoint_write_then_sigterm_then_force_stop(tmp_path):
    sup = Supervisor(tmp_path / "home")
    config, _ = job_config(tmp_path, **{"train.save_every": 1, "train.keep_last": 3})
    job_id = sup.submit(config)
    job_dir = Path(sup.show(job_id)["dir"])
    pid = wait_for("the runner pid", lambda: sup.show(job_id)["pid"])
    root = job_dir / "checkpoints"

    def writing() -> str | None:
        # A temporary checkpoint folder exists only while save_checkpoint writes it.
        return next((e.name for e in os.scandir(root) if e.name.startswith(".step-")), None)

    wait_for("the first complete checkpoint", lambda: complete_checkpoints(job_dir))
    partial = wait_for("a checkpoint being written", writing, poll=0)  # a write lasts milliseconds
    os.killpg(pid, signal.SIGKILL)
    wait_for("the kill to be noticed", lambda: sup.list()[0]["status"] == "interrupted")
    previous = complete_checkpoints(job_dir)
    half_done = [p.name for p in root.iterdir() if p.name not in previous]
    assert half_done, f"the kill should have left the partial {partial}"
    newest = max(previous, key=lambda name: int(name.removeprefix("step-")))

    seen = len(sup.events(job_id))
    sup.resume(job_id)
    wait_for("the resumed run's first step", lambda: event_of(sup, job_id, "progress", since=seen))
    assert Path(event_of(sup, job_id, "runner", since=seen)["resume_from"]).name == newest
    assert not any((root / name).exists() and name not in complete_checkpoints(job_dir) for name in half_done)

    # SIGTERM (docker stop, a shutdown) stops like the Stop button: a checkpoint, then `stopped`.
    running = sup.show(job_id)
    os.kill(running["pid"], signal.SIGTERM)
    stopped = sup.wait(job_id, timeout=WAIT_S)
    assert stopped["status"] == "stopped"
    assert f"step-{stopped['step']}" in complete_checkpoints(job_dir)

    # A forced stop kills the runner's whole process group at once, even before it trains.
    sup.resume(job_id)
    running = wait_for("the new runner's pid", lambda: sup.show(job_id)["pid"] != stopped["pid"]
                       and sup.show(job_id))
    wait_for("the runner's disk reserve", lambda: (job_dir / ".reserve").exists())
    assert sup.stop(job_id, force=True)["status"] == "stopped"
    wait_for("the runner to die", lambda: not process.is_alive(running["pid"], None))
    assert not (job_dir / "stop").exists() and not (job_dir / ".reserve").exists(), \
        "the kill leaves neither the stop flag nor the runner's disk reserve behind"


def test_a_full_disk_fails_the_job_with_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    sup = Supervisor(tmp_path / "home")
    config, _ = job_config(tmp_path)
    job_id = sup.submit(config)
    wait_for("the first checkpoint", lambda: event_of(sup, job_id, "checkpoint", step=3))
    # From now on no file of the runner may grow past 128 KiB: the LoRA tensors of a checkpoint do.
    limit = 128 * 1024
    resource.prlimit(sup.show(job_id)["pid"], resource.RLIMIT_FSIZE, (limit, limit))
    job = sup.wait(job_id, timeout=WAIT_S)
    assert job["status"] == "failed"
    assert "disk is full" in job["error"] and str(Path(job["dir"]) / "checkpoints") in job["error"]
    assert "Free space" in job["advice"]
    failed = event_of(sup, job_id, "failed")
    assert failed["error"] == job["error"]

    step3 = Path(job["dir"]) / "checkpoints" / "step-3"
    assert complete_checkpoints(Path(job["dir"])) == ["step-3"]
    assert sorted(p.name for p in (step3.parent).iterdir()) == ["step-3"]  # the partial one was removed
    assert load_file(next(step3.glob("*.safetensors")))  # and the previous one still loads
