"""The shared preview pool: where it runs, and that it gives its memory back when idle."""

from __future__ import annotations

import os
import time

from app.studio import Studio


def test_previews_stay_off_the_gpu_while_a_job_trains(tmp_path):
    """The decision as `preview()` makes it: from the home's job store, with a runner that is really alive."""
    from trainer.jobs import process

    studio = Studio(tmp_path / "home", gpu="cuda:7")  # a GPU this machine need not have: it must not be used
    assert studio.preview_device() == "cuda:7", "no job: previews get the GPU"
    store = studio.supervisor.store
    store.insert("job1", "mine", 10)
    store.update("job1", status="running", pid=os.getpid(), pid_start=process.start_time(os.getpid()))
    assert studio.preview_device() == "cpu"
    with studio.preview() as pool:  # would fail to load on cuda:7 if the rule were not kept
        assert pool.generate("a red square", seed=1, steps=1, width=64, height=64)[0].size == (64, 64)
    assert studio.pool_device() == "cpu"
    assert studio.yield_gpu() is False, "nothing on a GPU to give back"

    store.update("job1", pid=_finished_pid())  # its runner died: the job no longer holds the GPU
    assert studio.preview_device() == "cuda:7" and store.get("job1")["status"] == "interrupted"


def _finished_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


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


def test_the_generate_tab_sizes_default_to_the_base_models_resolution(tmp_path):
    import json

    from app.generate_tab import default_size

    folder = tmp_path / "sd15-like"
    for part, config in (("unet", {"sample_size": 96}), ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    assert default_size(Studio(tmp_path / "a", base_model=str(folder))) == 768
    assert default_size(Studio(tmp_path / "b", base_model="tiny-sdxl")) == 128
    assert default_size(Studio(tmp_path / "c", base_model=str(tmp_path / "missing"))) == 512  # the guess


def test_delete_image_removes_the_image_and_its_caption_and_nothing_outside(tmp_path):
    import pytest

    from app.datasets_tab import delete_image
    from app.persist import secret
    from app.security import SecurityError

    studio = Studio(tmp_path / "home")
    folder = studio.dataset_path("cats")
    folder.mkdir()
    (folder / "01.png").write_bytes(b"png")
    (folder / "01.txt").write_text("a cat")
    (studio.home / "keep.png").write_bytes(b"png")
    for bad in ("../../keep.png", "01.txt", "", "02.png"):
        with pytest.raises(SecurityError):
            delete_image(studio, "cats", bad)
    assert delete_image(studio, "cats", "01.png") == "Deleted 01.png and its caption from **cats**."
    assert list(folder.iterdir()) == [] and (studio.home / "keep.png").exists()
    # the browser-state key is made once and kept private: a restarted server reads what the page stored
    assert secret(studio.home) == secret(studio.home)
    assert (studio.home / ".browser-secret").stat().st_mode & 0o077 == 0
