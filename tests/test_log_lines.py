"""The job log reads as sentences: every event kind the loop and the runner write has a line of its own."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.jobs import Supervisor
from trainer.jobs.log_lines import clock, describe

ROOT = Path(__file__).resolve().parents[1]


def test_each_event_kind_reads_as_a_line_not_a_dict():
    lines = {
        "progress": {"kind": "progress", "step": 120, "total_steps": 300, "loss": 0.08412, "lr": 1e-4,
                     "it_per_s": 5.21, "eta_s": 34.4, "epoch": 3},
        "started": {"kind": "started", "total_steps": 300, "start_step": 0, "device": "cpu",
                    "mixed_precision": "no", "cached_text": True, "cached_latents": True, "num_images": 12,
                    "skipped": ["/d/bad.png"]},
        "done": {"kind": "done", "step": 300, "outputs": ["/o/ink.safetensors", "/o/ink.peft.safetensors"],
                 "best_step": 200},
        "failed": {"kind": "failed", "error": "out of memory", "advice": "turn on gradient checkpointing",
                   "suggested": {"train.gradient_checkpointing": True}},
        "validation": {"kind": "validation", "step": 100, "loss": 0.1234, "best_step": 50, "best_loss": 0.12},
        "checkpoint": {"kind": "checkpoint", "step": 100, "path": "/j/checkpoints/step-100"},
        "sample": {"kind": "sample", "step": 100, "paths": ["a.png", "b.png"]},
        "queued": {"kind": "queued", "resume": True, "changed": {"data.batch_size": [4, 1]}},
    }
    got = {kind: describe(record) for kind, record in lines.items()}
    assert got["progress"] == "step 120/300 · loss 0.08412 · 5.2 it/s · ETA 0:34"
    assert got["started"] == ("training 300 steps on cpu (float32), from scratch; 12 images, latents and text "
                              "cached; skipped 1 bad image(s): bad.png")
    assert got["done"] == "finished at step 300; best step 200; wrote ink.safetensors, ink.peft.safetensors"
    assert got["failed"] == ("failed: out of memory (fix: turn on gradient checkpointing); settings that fit: "
                             "train.gradient_checkpointing = True")
    assert got["validation"] == "validation loss 0.1234 at step 100 (best 0.12 at step 50)"
    assert got["checkpoint"] == "checkpoint saved at step 100 (step-100)"
    assert got["sample"] == "2 sample image(s) at step 100"
    assert got["queued"] == "queued again to resume with data.batch_size 4 -> 1"
    assert not any("{" in line for line in got.values())


def test_an_unknown_or_incomplete_record_falls_back_to_its_fields():
    assert describe({"kind": "future", "a": 1, "time": 5}) == "future: a 1"
    assert describe({"kind": "progress", "step": 3}) == "progress: step 3"  # no total_steps: fields, no crash


def test_clock():
    assert (clock(34.4), clock(725), clock(3723)) == ("0:34", "12:05", "1:02:03")


@pytest.mark.timeout(300)
def test_a_real_jobs_log_has_readable_lines_and_no_library_notices(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = load_config(None, {"data.path": str(ROOT / "datasets" / "example"), "data.resolution": 64,
                                "network.rank": 4, "train.steps": 2, "export.name": "logged",
                                "export.dtype": "float32", "sample.every_n_steps": 2, "sample.steps": 2})
    sup = Supervisor(tmp_path / "home")
    job_id = sup.submit(config)
    deadline = time.monotonic() + 280
    while sup.show(job_id)["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
    log = (sup.files(job_id).dir / "runner.log").read_text()
    assert sup.show(job_id)["status"] == "done", log
    assert "training 2 steps on cpu (float32), from scratch; 12 images" in log
    assert re.search(r"^step 2/2 · loss [0-9.e-]+ · .* it/s · ETA 0:00$", log, re.M), log
    assert re.search(r"^finished at step 2; wrote logged\.safetensors, logged\.peft\.safetensors", log, re.M), log
    for notice in ("requires torchvision", "kernels-community", "{'", "should be kept in float32"):
        assert notice not in log, log
