"""The job table, the event log, the heartbeat and process identity, on real files and real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from trainer.errors import JobError
from trainer.jobs import process
from trainer.jobs.events import EventLog, Heartbeat, heartbeat_age, read_events, tail_events
from trainer.jobs.store import JobStore


def sleeper(seconds: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                            start_new_session=True)


def test_insert_get_and_request_key_make_one_job(tmp_path):
    store = JobStore(tmp_path / "studio.sqlite")
    assert store.insert("aaaa", "cats", 20, request_key="click-1") == "aaaa"
    assert store.insert("bbbb", "cats", 20, request_key="click-1") == "aaaa"  # a double click
    assert [job["id"] for job in store.all()] == ["aaaa"]
    job = store.get("aaaa")
    assert (job["status"], job["name"], job["total_steps"], job["outputs"]) == ("queued", "cats", 20, [])
    with pytest.raises(JobError, match="(?i)no job with id 'zzzz'"):
        store.get("zzzz")


def test_concurrent_double_submit_from_threads_makes_one_job(tmp_path):
    path = tmp_path / "studio.sqlite"
    JobStore(path)
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(JobStore(path).insert(f"job{i}", "x", 1, "k")))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(JobStore(path).all()) == 1


def test_claim_next_respects_the_limit_and_the_queue_order(tmp_path):
    store = JobStore(tmp_path / "studio.sqlite")
    for job_id in ("j1", "j2", "j3"):
        store.insert(job_id, job_id, 10)
        time.sleep(0.01)
    assert store.claim_next(1)["id"] == "j1"
    assert store.claim_next(1) is None
    assert store.claim_next(2)["id"] == "j2"
    assert store.get("j1")["attempts"] == 1
    assert [j["status"] for j in store.all()] == ["running", "running", "queued"]


def test_update_only_if_guards_the_status(tmp_path):
    store = JobStore(tmp_path / "studio.sqlite")
    store.insert("j1", "a", 10)
    assert not store.update("j1", status="done", only_if=("running",))
    assert store.update("j1", status="running", pid=5, outputs=["/x.safetensors"], only_if=("queued",))
    assert store.update("j1", loss=float("nan"))  # a run stopped before its first step has no loss
    job = store.get("j1")
    assert (job["status"], job["pid"], job["outputs"], job["loss"]) == ("running", 5, ["/x.safetensors"], None)
    with pytest.raises(ValueError, match="unknown job status"):
        store.update("j1", status="exploded")


def test_mark_interrupted_only_touches_the_attempt_it_saw(tmp_path):
    store = JobStore(tmp_path / "studio.sqlite")
    store.insert("j1", "a", 10)
    store.update("j1", status="running", pid=222)  # resumed meanwhile: a new runner with another pid
    assert not store.mark_interrupted("j1", pid=111)
    assert store.mark_interrupted("j1", pid=222)
    assert store.get("j1")["status"] == "interrupted"


def test_a_newer_schema_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "studio.sqlite"
    JobStore(path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(JobError, match="studio.sqlite was written by a newer LoRA Studio"):
        JobStore(path)


def test_settings_round_trip(tmp_path):
    store = JobStore(tmp_path / "studio.sqlite")
    assert store.get_setting("max_concurrent", 1) == 1
    store.set_setting("max_concurrent", 3)
    assert JobStore(tmp_path / "studio.sqlite").get_setting("max_concurrent") == 3


def test_event_log_survives_a_torn_line(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write({"kind": "progress", "step": 1})
    with open(path, "ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"kind": "progress", "st')
    assert [e["step"] for e in read_events(path)] == [1]  # the partial line is not an event yet
    EventLog(path).write({"kind": "progress", "step": 2})  # a resumed runner starts a fresh line
    events = read_events(path)
    assert [e["step"] for e in events] == [1, 2]
    assert read_events(path, since=1) == events[1:]
    assert events[0]["time"] > 0
    EventLog(path).write({"kind": "done", "loss": float("nan"), "lr": [float("inf"), 1.0]})
    assert read_events(path, since=2) == [{**read_events(path, since=2)[0], "loss": None, "lr": [None, 1.0]}]


def test_tail_events_reads_only_the_end_of_a_long_log(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for step in range(3000):
        log.write({"kind": "progress", "step": step, "loss": 0.5})
    tail = tail_events(path, max_bytes=4096)
    assert tail[-1]["step"] == 2999 and 10 < len(tail) < 100
    assert all(e["kind"] == "progress" for e in tail)


def test_heartbeat_touches_its_file(tmp_path):
    beat = Heartbeat(tmp_path / "heartbeat", interval=0.05).start()
    os.utime(tmp_path / "heartbeat", (0, 0))
    assert heartbeat_age(tmp_path / "heartbeat") > 1e9
    deadline = time.time() + 10
    while heartbeat_age(tmp_path / "heartbeat") > 5 and time.time() < deadline:
        time.sleep(0.05)
    beat.stop()
    assert heartbeat_age(tmp_path / "heartbeat") < 5
    assert heartbeat_age(tmp_path / "nothing") is None


def test_process_identity_needs_pid_and_start_time():
    child = sleeper()
    try:
        started = process.start_time(child.pid)
        assert started is not None
        assert process.is_alive(child.pid, started)
        assert not process.is_alive(child.pid, started + 1)  # same pid, another process: pid reuse
        assert not process.kill_group(child.pid, started + 1)  # and it is never signalled
        assert child.poll() is None
        assert process.kill_group(child.pid, started)
        deadline = time.time() + 10
        while process.start_time(child.pid) is not None and time.time() < deadline:
            time.sleep(0.02)
        # Killed but not yet reaped: a zombie has a /proc entry and still counts as gone.
        assert not process.is_alive(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
