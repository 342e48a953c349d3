"""A job with `--num-processes 2`: the runner launches two CPU processes through accelerate (gloo) and the
job ends done with one set of files, in its output folder and in the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.test_jobs_process import ROOT, WAIT_S, job_config


def test_cli_job_with_two_processes_trains_and_publishes_one_set_of_files(tmp_path):
    home = tmp_path / "home"
    _, config_path = job_config(tmp_path, name="pair", **{"train.steps": 4, "train.save_every": 0})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    submitted = subprocess.run([sys.executable, "-m", "trainer.cli", "jobs", "submit", str(config_path),
                                "--num-processes", "2", "--wait", "--json", "--home", str(home)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    job = json.loads(submitted.stdout)
    assert submitted.returncode == 0 and job["status"] == "done", (submitted.stderr, job)
    assert job["step"] == 4
    outputs = [Path(p) for p in job["outputs"]]
    assert sorted(p.name for p in outputs) == ["config.toml", "pair.peft.safetensors", "pair.safetensors"]
    assert all(p.is_file() for p in outputs)
    assert 'num_processes = 2' in (Path(job["dir"]) / "config.toml").read_text()
    events = [json.loads(line) for line in (Path(job["dir"]) / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("started") == 1  # rank 0 alone reports
    assert [e for e in events if e["kind"] == "started"][0]["num_processes"] == 2
    library = list((home / "loras").glob("*.safetensors"))
    assert library and load_file(str(library[0]))
