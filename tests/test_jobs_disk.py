"""A write that hits a full disk (here: a file-size limit set in the child) says so and where, whichever
library writes the file: plain Python, safetensors (Rust) or torch.save (C++)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WRITE = """
import sys, torch
from safetensors.torch import save_file
from trainer.errors import TrainingError
from trainer.fileio import atomic_path, atomic_write_bytes

def write_python(path):
    atomic_write_bytes(path, b"x" * 200_000)

def write_safetensors(path):
    with atomic_path(path) as tmp:
        save_file({"w": torch.zeros(50_000)}, str(tmp))

def write_torch(path):
    with atomic_path(path) as tmp:
        torch.save({"w": torch.zeros(50_000)}, str(tmp))

for name, write in [("python", write_python), ("safetensors", write_safetensors), ("torch", write_torch)]:
    try:
        write(sys.argv[1] + "." + name)
    except TrainingError as err:
        print(name, "|", err)
    else:
        print(name, "| no error")
"""


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.timeout(120)
def test_every_writer_reports_a_full_disk_with_the_path(tmp_path):
    target = tmp_path / "out" / "lora"
    run = subprocess.run([sys.executable, "-c", WRITE, str(target)], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=limit_file_size, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" | ", 1) for line in run.stdout.splitlines())
    assert set(lines) == {"python", "safetensors", "torch"}
    for name, message in lines.items():
        assert "the disk is full" in message and str(target) in message, (name, message)
        assert "Free space on the disk that holds" in message
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left


# A real job on a small tmpfs of its own (a private mount namespace, so no root is needed): the disk fills
# up after the last checkpoint, so the export is the write that finds it full.
FULL_AT_EXPORT = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from trainer.config import load_config
from trainer.jobs import Supervisor
from trainer.jobs.events import read_events

mount, example, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
home = mount / "home"
# "room-for-events": room for a few progress events, not for the 265 kB LoRA files. "nothing-left": not
# one free block; the runner's reserve (released on failure) is what lets it record the failure.
LEAVE = 128 * 1024 if when == "room-for-events" else 0


def fill(path, leave):
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    with open(path, "ab", buffering=0) as handle:
        if free > leave:
            os.posix_fallocate(handle.fileno(), handle.seek(0, 2), free - leave)
        if leave == 0:  # the last blocks, byte by byte until the disk says no
            try:
                while True:
                    handle.write(b"x" * 512)
            except OSError:
                pass


def cli(*args):
    run = subprocess.run([sys.executable, "-m", "trainer.cli", "jobs", *args, "--home", str(home)],
                         capture_output=True, text=True, timeout=120)
    return {"rc": run.returncode, "out": run.stdout, "err": run.stderr}


config = load_config(None, {"data.path": example, "data.resolution": 64, "network.rank": 4, "train.steps": 12,
                            "train.save_every": 3, "export.name": "full", "export.dtype": "float32",
                            "sample.every_n_steps": 0, "train.log_with": "none"})
sup = Supervisor(home)
job = sup.submit(config)
events = Path(sup.show(job)["dir"]) / "events.jsonl"
deadline = time.monotonic() + 250
while not any(e.get("kind") == "checkpoint" and e.get("step") == 9 for e in read_events(events)):
    assert time.monotonic() < deadline, "no checkpoint at step 9"
    time.sleep(0.02)
fill(mount / "ballast", LEAVE)
while sup.store.get(job)["status"] in ("queued", "running"):
    assert time.monotonic() < deadline, "the job did not end"
    time.sleep(0.1)
fill(mount / "ballast", 0)
result = {"store": sup.store.get(job), "events": read_events(events),
          "checkpoints": sorted(p.name for p in (events.parent / "checkpoints").iterdir()),
          "list": cli("list", "--json"), "show": cli("show", job, "--json"), "list_text": cli("list")}
try:
    (mount / "probe").write_bytes(b"x" * 4096)
    result["still_room"] = True
except OSError:
    result["still_room"] = False
(mount / "ballast").unlink()
result["resume"] = cli("resume", job)
result["after"] = sup.wait(job, timeout=250)
print("RESULT " + json.dumps(result, default=str))
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("when", ["room-for-events", "nothing-left"])
def test_a_full_disk_at_export_fails_the_job_resumably_and_jobs_list_still_works(tmp_path, when):
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_AT_EXPORT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    shell = 'mount -t tmpfs -o size=32m tmpfs "$1" && exec "$2" "$3" "$1" "$4" "$5"'
    run = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", shell, "sh", str(mount),
                          sys.executable, str(script), str(ROOT / "datasets" / "example"), when],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["still_room"] is False, "the disk was not full while jobs list ran"
    store, failed = result["store"], [e for e in result["events"] if e["kind"] == "failed"]
    assert store["status"] == "failed", store
    where = "/output/full" if when == "room-for-events" else f"/home/jobs/{store['id']}/"
    assert "the disk is full" in store["error"] and where in store["error"], store["error"]
    assert failed and "the disk is full" in failed[-1]["error"] and "resume" in failed[-1]["advice"]
    assert "step-9" in result["checkpoints"], result["checkpoints"]
    assert result["list"]["rc"] == 0, result["list"]
    listed = json.loads(result["list"]["out"])
    assert [(j["status"], "the disk is full" in j["error"]) for j in listed] == [("failed", True)]
    assert result["show"]["rc"] == 0 and json.loads(result["show"]["out"])["status"] == "failed"
    assert result["list_text"]["rc"] == 0 and "failed" in result["list_text"]["out"]
    assert "Traceback" not in result["list"]["err"] + result["show"]["err"]
    assert result["resume"]["rc"] == 0, result["resume"]
    after = result["after"]
    assert after["status"] == "done" and after["step"] == 12 and after["library_name"] == "full", after
