"""Previews take the CPU threads the running jobs leave free, so a preview during training cannot starve it."""

from __future__ import annotations

import torch

from app.studio import Studio, usable_cores
from trainer.config import load_config, save_config


def _running_job(studio: Studio, job_id: str, num_threads: int) -> dict:
    config = studio.supervisor.files(job_id).config
    config.parent.mkdir(parents=True, exist_ok=True)
    save_config(load_config(None, {"train.num_threads": num_threads}), config)
    return {"id": job_id, "status": "running"}


def test_a_preview_uses_the_cores_the_running_jobs_leave(tmp_home):
    studio = Studio(tmp_home)
    cores = usable_cores()
    assert studio.preview_threads([]) == cores
    one = _running_job(studio, "a1", 1)
    assert studio.preview_threads([one]) == max(1, cores - 1)
    every = _running_job(studio, "a2", 0)  # 0: the job trains on every core
    assert studio.preview_threads([every]) == 1
    assert studio.preview_threads([{**every, "status": "stopped"}]) == cores
    broken = {"id": "a3", "status": "running"}  # no readable config: counted as the default, one thread
    assert studio.preview_threads([broken]) == max(1, cores - 1)


def test_the_preview_pool_runs_on_those_threads(tmp_home):
    studio = Studio(tmp_home)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with studio.preview():  # no job runs: every usable core
            assert torch.get_num_threads() == usable_cores()
        assert torch.get_num_threads() == 1  # given back: the process keeps its own count
    finally:
        torch.set_num_threads(before)
