"""The shared preview pool: where it runs, and that it gives its memory back when idle."""

from __future__ import annotations

import time

from app.studio import Studio


def test_previews_stay_off_the_gpu_while_a_job_trains(tmp_path):
    studio = Studio(tmp_path / "home")
    assert studio._preview_device(training=True) == "cpu"
    assert studio.yield_gpu([{"id": "a", "status": "running"}]) is False  # nothing on a GPU to give back


def test_an_idle_pool_is_released(tmp_path):
    studio = Studio(tmp_path / "home", idle_s=0.5)
    assert studio.dataset_names() == [] and (studio.home / "loras").is_dir()
    with studio.preview() as pool:
        assert pool.generate("a red square", seed=1, steps=1, width=64, height=64)[0].size == (64, 64)
    assert studio.pool_device() is not None
    assert studio.release_if_idle() is False  # used just now
    time.sleep(0.6)
    assert studio.release_if_idle() is True
    assert studio.pool_device() is None and studio._pool is None
