"""A runner that ends on its own is reaped by the process that started it: no zombie is left behind.

A real job trains the tiny model for two steps in its own runner; once it is done, the runner's
`/proc/<pid>/stat` must not show state Z while the supervisor that started it is still alive (and
without calling it again: the server may not look at the job for hours).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.jobs import Supervisor
from trainer.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[1]


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return raw[raw.rindex(")") + 2:].split()[0]


@pytest.mark.timeout(300)
def test_a_finished_runner_is_not_left_a_zombie(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = load_config(None, {"data.path": str(ROOT / "datasets" / "example"), "data.resolution": 64,
                                "network.rank": 4, "train.steps": 2, "train.save_every": 100,
                                "export.name": "reaped", "export.dtype": "float32"})
    sup = Supervisor(tmp_path / "home")
    job_id = sup.submit(config)
    store = JobStore(sup.home.db)
    deadline = time.monotonic() + 280
    while (job := store.get(job_id))["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["status"] == "done", sup.log_tail(job_id)
    pid = job["pid"]
    deadline = time.monotonic() + 10
    while _state(pid) not in (None,) and time.monotonic() < deadline:
        assert _state(pid) != "X"
        time.sleep(0.1)
    assert _state(pid) is None, f"runner {pid} is still in /proc with state {_state(pid)} (a zombie)"
    assert sup.show(job_id)["library_name"] == "reaped"
    assert "published to the library as reaped" in sup.log_tail(job_id)
