"""Supervisor commands and reconciliation against real processes standing in as runners (no training).

The training runner itself is exercised in test_jobs_process.py; here a sleeping Python process holds
a job's slot, so queueing, stopping and pid checks are tested in milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.errors import ConfigError, JobError
from trainer.jobs import Supervisor, process
from trainer.jobs.events import read_events
from trainer.jobs.library import publish
from trainer.jobs.paths import Home, default_home

SHOW_KEYS = {"id", "name", "status", "step", "total_steps", "loss", "eta_s", "pid", "created", "updated",
             "outputs", "error", "dir"}


def occupy(sup: Supervisor, job_id: str = "holder") -> subprocess.Popen:
    """A `running` job whose runner is a real sleeping process in a session of its own."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    sup.store.insert(job_id, "holder", 10)
    sup.store.update(job_id, status="running", pid=child.pid, pid_start=process.start_time(child.pid))
    return child


@pytest.fixture
def sup(tmp_path):
    return Supervisor(tmp_path / "home")


def test_home_layout_and_default(tmp_path, monkeypatch):
    Supervisor(tmp_path / "h")
    assert (tmp_path / "h" / "studio.sqlite").is_file()
    assert (tmp_path / "h" / "jobs").is_dir() and (tmp_path / "h" / "loras").is_dir()
    monkeypatch.setenv("LORA_STUDIO_HOME", str(tmp_path / "env-home"))
    assert default_home() == (tmp_path / "env-home").resolve()
    monkeypatch.delenv("LORA_STUDIO_HOME")
    assert default_home() == Path.home() / ".lora-studio"


def test_submit_queues_behind_a_running_job_and_pins_paths(sup, tmp_path, monkeypatch):
    holder = occupy(sup)
    try:
        monkeypatch.chdir(tmp_path)
        config = TrainConfig()
        config.data.path = "my-dataset"
        (tmp_path / "my-dataset").mkdir()
        job_id = sup.submit(config, request_key="click")
        assert sup.submit(config, request_key="click") == job_id  # a double click makes one job
        job = sup.show(job_id)
        assert set(job) >= SHOW_KEYS
        assert job["status"] == "queued" and job["pid"] is None
        saved = tomllib.loads((Path(job["dir"]) / "config.toml").read_text())
        assert saved["data"]["path"] == str(tmp_path / "my-dataset")  # the runner works elsewhere
        assert saved["export"]["output_dir"] == str(Path(job["dir"]) / "output")
        assert [e["kind"] for e in sup.events(job_id)] == ["queued"]
        assert [j["id"] for j in sup.list()] == ["holder", job_id]
        sup.remove(job_id)
        assert not Path(job["dir"]).exists()
        with pytest.raises(JobError, match="(?i)no job"):
            sup.show(job_id)
    finally:
        holder.kill()
        holder.wait()


def test_submit_refuses_an_invalid_config_before_queueing(sup):
    config = TrainConfig()
    config.train.steps = 0
    with pytest.raises(ConfigError, match="train.steps must be >= 1"):
        sup.submit(config)
    assert sup.list() == []


def test_reconcile_marks_dead_and_reused_pids_interrupted(sup):
    live = occupy(sup, "live")
    reused = occupy(sup, "reused")
    dead = occupy(sup, "dead")
    # The pid now names another process: its start time differs from the recorded one.
    sup.store.update("reused", pid_start=process.start_time(reused.pid) + 7)
    dead.kill()
    dead.wait()
    sup.store.insert("lost", "lost", 10)  # claimed, but its supervisor died before spawning
    sup.store.update("lost", status="running")
    with sqlite3.connect(sup.home.db) as db:
        db.execute("UPDATE jobs SET updated = updated - 3600 WHERE id = 'lost'")
    try:
        assert sup.show("dead")["status"] == "interrupted"  # show() checks its own job
        assert sorted(sup.reconcile()) == ["lost", "reused"]
        statuses = {job["id"]: job["status"] for job in sup.list()}
        assert statuses == {"live": "running", "reused": "interrupted", "dead": "interrupted",
                            "lost": "interrupted"}
        assert read_events(sup.files("dead").events)[-1]["kind"] == "interrupted"
        assert live.poll() is None and reused.poll() is None  # reconcile never kills anything
    finally:
        for child in (live, reused):
            child.kill()
            child.wait()


def test_graceful_stop_raises_the_flag_and_force_stop_kills_the_group(sup):
    holder = occupy(sup)
    try:
        job = sup.stop("holder")
        assert job["status"] == "running" and job["stopping"]
        assert sup.files("holder").stop_flag.is_file()
        job = sup.stop("holder", force=True)
        assert job["status"] == "stopped"
        assert holder.wait(timeout=10) < 0  # killed by a signal
        last = read_events(sup.files("holder").events)[-1]
        assert (last["kind"], last["forced"]) == ("stopped", True)
        with pytest.raises(JobError, match="is stopped, not running"):
            sup.stop("holder")
    finally:
        holder.kill()
        holder.wait()


def test_stop_a_queued_job_and_the_resume_rules(sup):
    holder = occupy(sup)
    try:
        job_id = sup.submit(TrainConfig())
        assert sup.stop(job_id)["status"] == "stopped"
        assert sup.resume(job_id) == job_id
        assert sup.show(job_id)["status"] == "queued"  # the slot is still taken
        with pytest.raises(JobError, match="is queued; only stopped, interrupted or failed jobs resume"):
            sup.resume(job_id)
        with pytest.raises(JobError, match="is running"):
            sup.remove("holder")
        sup.remove(job_id)
        sup.store.update("holder", status="done")
        with pytest.raises(JobError, match="Submit a new job"):
            sup.resume("holder")
    finally:
        holder.kill()
        holder.wait()


def test_max_concurrent_is_saved_in_the_home(tmp_path):
    sup = Supervisor(tmp_path / "h")
    assert sup.max_concurrent == 1
    sup.save_max_concurrent(2)
    assert Supervisor(tmp_path / "h").max_concurrent == 2
    assert Supervisor(tmp_path / "h", max_concurrent=3).max_concurrent == 3
    with pytest.raises(JobError, match="--max-concurrent must be >= 1"):
        sup.save_max_concurrent(0)


def test_publish_keeps_names_apart_and_writes_a_sidecar(tmp_path):
    home = Home(tmp_path / "home").ensure()
    out = tmp_path / "out"
    out.mkdir()
    files = [out / "cats.safetensors", out / "cats.peft.safetensors", out / "config.toml"]
    for path in files:
        path.write_bytes(b"x" * 8)
    config = TrainConfig()
    config.export.name = "cats"
    first = publish(home, "job1", files, config, step=20)
    assert [p.name for p in first] == ["cats.safetensors", "cats.peft.safetensors", "cats.json"]
    again = publish(home, "job1", files, config, step=20)  # the same job again replaces its own files
    assert again == first
    other = publish(home, "job2", files, config, step=20)
    assert [p.name for p in other] == ["cats-2.safetensors", "cats-2.peft.safetensors", "cats-2.json"]
    sidecar = json.loads((home.loras / "cats.json").read_text())
    assert (sidecar["job"], sidecar["steps"], sidecar["config"]["export"]["name"]) == ("job1", 20, "cats")
