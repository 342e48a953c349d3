"""Validation on the tiny model: a held-out set scored at fixed timesteps and noise, the best LoRA kept,
early stopping, and the best step surviving a resume."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.export import read_lora_metadata
from trainer.loop import train
from trainer.precision import pin_threads

OVERFIT = {"data.resolution": 64, "train.steps": 24, "optim.learning_rate": 3e-2, "export.dtype": "float32",
           "data.validation_fraction": 0.25, "train.validate_every": 2, "train.save_every": 12,
           "train.log_with": "none", "export.name": "val"}


@pytest.fixture(scope="module")
def four_images(tmp_path_factory, example_dataset):
    data = tmp_path_factory.mktemp("four")
    for stem in ("00", "01", "02", "03"):
        for suffix in (".png", ".txt"):
            shutil.copy(example_dataset / f"{stem}{suffix}", data / f"{stem}{suffix}")
    return data


def run(data, out, **overrides):
    config = load_config(None, {**OVERFIT, "data.path": str(data), "export.output_dir": str(out), **overrides})
    events = []
    result = train_pinned(config, on_event=events.append)
    return config, result, events


def train_pinned(config, **kwargs):
    """train() with the config's thread count pinned, as the CLI and the job runner do: the thread count is part
    of what makes a run repeat exactly, and which step is best by a small margin depends on it."""
    threads = torch.get_num_threads()
    pin_threads(config.train.num_threads)
    try:
        return train(config, **kwargs)
    finally:
        torch.set_num_threads(threads)


def validations(events):
    return [(e.step, e.loss) for e in events if e.kind == "validation"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, four_images):
    """A high learning rate on 3 training images: the validation loss stops falling before the last step."""
    return run(four_images, tmp_path_factory.mktemp("overfit"))


def test_validation_images_are_held_out_of_training(overfit, four_images):
    from trainer.data import check_dataset
    from trainer.data.split import split_items

    config, _, events = overfit
    started = next(e for e in events if e.kind == "started")
    assert (started.num_images, started.num_validation) == (3, 1)
    items, _ = check_dataset(config)
    train_items, held_out = split_items(items, config)
    assert len(held_out) == 1 and held_out[0].image_path not in {i.image_path for i in train_items}
    assert split_items(items, config) == (train_items, held_out)  # seeded: the same image every time


def test_best_step_is_earlier_than_the_last_and_its_file_says_so(overfit):
    config, result, events = overfit
    checks = validations(events)
    assert [s for s, _ in checks] == list(range(2, 25, 2))
    best_step, best_loss = min(checks, key=lambda c: c[1])
    assert result.best_step == best_step < result.step == 24
    done = events[-1]
    assert (done.kind, done.best_step, done.best_loss) == ("done", best_step, best_loss)
    out = config.export.output_dir
    for name in ("val.best.safetensors", "val.best.peft.safetensors"):
        assert read_lora_metadata(f"{out}/{name}")["ss_best_step"] == str(best_step)
        assert read_lora_metadata(f"{out}/{name}")["ss_steps"] == str(best_step)
    assert read_lora_metadata(f"{out}/val.safetensors")["ss_steps"] == "24"
    assert f"{out}/val.best.safetensors" in done.outputs


def test_rerun_repeats_the_validation_losses_and_the_best_file_is_the_lora_at_that_step(overfit, four_images,
                                                                                        tmp_path):
    config, result, events = overfit
    again, rerun, rerun_events = run(four_images, tmp_path, **{"train.steps": result.best_step})
    assert validations(rerun_events) == [c for c in validations(events) if c[0] <= result.best_step]
    best = load_file(f"{config.export.output_dir}/val.best.peft.safetensors")
    at_step = load_file(f"{again.export.output_dir}/val.peft.safetensors")
    assert best.keys() == at_step.keys()
    assert all(torch.equal(best[k], at_step[k]) for k in best)
    final = load_file(f"{config.export.output_dir}/val.peft.safetensors")
    assert not all(torch.equal(best[k], final[k]) for k in best)


def test_resume_keeps_the_best_step(overfit, tmp_path):
    config, result, events = overfit
    copy = tmp_path / "run"
    shutil.copytree(config.export.output_dir, copy)
    resumed = load_config(None, {**OVERFIT, "data.path": config.data.path, "export.output_dir": str(copy)})
    resumed_events = []
    again = train_pinned(resumed, on_event=resumed_events.append, resume_from=copy / "checkpoints" / "step-12")
    assert validations(resumed_events) == [c for c in validations(events) if c[0] > 12]
    assert again.best_step == result.best_step
    assert resumed_events[-1].best_loss == events[-1].best_loss


def test_early_stop_ends_the_run_after_patience_checks_without_improvement(four_images, tmp_path):
    config, result, events = run(four_images, tmp_path, **{"train.early_stop_patience": 2})
    checks = validations(events)
    best_step = min(checks, key=lambda c: c[1])[0]
    assert result.early_stopped and not result.stopped
    assert result.step == best_step + 2 * 2 < 24
    assert checks[-1][0] == result.step
    assert read_lora_metadata(tmp_path / "val.best.safetensors")["ss_steps"] == str(best_step)
    assert read_lora_metadata(tmp_path / "val.safetensors")["ss_steps"] == str(result.step)
    assert events[-1].early_stopped and events[-1].best_step == best_step


def test_validation_loss_is_the_same_number_when_computed_twice(four_images):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from trainer.data import check_dataset
    from trainer.data.split import split_items
    from trainer.models import load_base
    from trainer.network import add_lora
    from trainer.validation import Validator

    config = load_config(None, {**OVERFIT, "data.path": str(four_images)})
    _, held_out = split_items(check_dataset(config)[0], config)
    base = load_base(config.model)
    add_lora(base, config.network)
    scheduler = DDPMScheduler.from_config(base.pipe.scheduler.config)
    validator = Validator.build(base, held_out, config, 64, torch.device("cpu"), torch.float32, scheduler)
    base.pipe.unet.train()
    rng_before = torch.get_rng_state()
    first, second = validator.loss(Accelerator(cpu=True), base.pipe.unet), \
        validator.loss(Accelerator(cpu=True), base.pipe.unet)
    assert first == second and first > 0
    assert base.pipe.unet.training  # back in train mode afterwards
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training noise is not disturbed


@pytest.mark.parametrize(("overrides", "field"), [
    ({"data.validation_fraction": 0.6, "train.validate_every": 5}, "data.validation_fraction must be in 0..0.5"),
    ({"train.validate_every": 5}, "train.validate_every = 5 needs a validation set"),
    ({"data.validation_fraction": 0.2}, "train.validate_every is 0"),
    ({"train.early_stop_patience": 3}, "train.early_stop_patience = 3 needs the validation loss"),
    ({"train.validate_every": -1}, "train.validate_every must be >= 0"),
    ({"data.validation_fraction": 0.2, "data.validation_dir": "val", "train.validate_every": 5},
     "data.validation_fraction and data.validation_dir"),
])
def test_bad_validation_settings_name_the_fields(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def test_a_small_fraction_holds_out_one_image_and_a_single_image_cannot_be_split(four_images, tmp_path):
    from trainer.data import check_dataset
    from trainer.data.split import split_items

    config = load_config(None, {"data.path": str(four_images), "data.validation_fraction": 0.1,
                                "train.validate_every": 5})
    items, held_out = split_items(check_dataset(config)[0], config)
    assert (len(items), len(held_out)) == (3, 1)
    for suffix in (".png", ".txt"):
        shutil.copy(four_images / f"00{suffix}", tmp_path / f"00{suffix}")
    config = load_config(None, {"data.path": str(tmp_path), "data.validation_fraction": 0.5,
                                "train.validate_every": 5})
    with pytest.raises(ConfigError, match="leaves none to train on"):
        split_items(check_dataset(config)[0], config)


def test_a_validation_folder_is_read_like_the_dataset(four_images, example_dataset):
    from trainer.data import check_dataset
    from trainer.data.split import split_items

    config = load_config(None, {"data.path": str(four_images), "data.validation_dir": str(example_dataset),
                                "train.validate_every": 5})
    items, held_out = split_items(check_dataset(config)[0], config)
    assert len(items) == 4 and len(held_out) == len(list(example_dataset.glob("*.png")))


def test_a_job_logs_validation_and_its_views_show_the_best_step(four_images, tmp_path, monkeypatch):
    """A real runner process: events.jsonl carries the checks, `jobs show` the best step, the Train tab
    plots the validation series beside the training loss."""
    from app.studio import Studio
    from app.train_tab import job_view

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = load_config(None, {**OVERFIT, "data.path": str(four_images), "train.steps": 8,
                                "train.validate_every": 4, "train.save_every": 0})
    studio = Studio(tmp_path / "home")
    sup = studio.supervisor
    job_id = sup.submit(config)
    job = sup.wait(job_id, timeout=300)
    assert job["status"] == "done", job["error"]
    checks = [e for e in sup.events(job_id) if e["kind"] == "validation"]
    assert [e["step"] for e in checks] == [4, 8]
    best = min(checks, key=lambda e: e["loss"])
    assert job["best_step"] == best["step"] and job["validation_loss"] == checks[-1]["loss"]
    assert any(p.endswith("val.best.safetensors") for p in job["outputs"])
    view = job_view(studio, job_id)
    frame = view["loss"]
    assert sorted(set(frame["series"])) == ["training (raw)", "training (smoothed)", "validation"]
    assert list(frame[frame["series"] == "validation"]["step"]) == [4, 8]
    assert f"best step {best['step']}" in view["status"]


def test_two_processes_score_the_validation_set_like_one(example_dataset, tmp_path):
    """Through the CLI's flags under `--num-processes 2`: each rank scores its share of the 3 held-out images
    (2 and 1) and the reduced loss matches one process at the same global batch."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    flags = ["--data", str(example_dataset), "--resolution", "64", "--steps", "2", "--validation-fraction", "0.25",
             "--validate-every", "1"]
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "train", *flags, "--batch-size", "1",
                           "--num-processes", "2", "--output", str(tmp_path / "two"), "--events",
                           str(tmp_path / "events.jsonl")], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = [(e["step"], e["loss"]) for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
           if e["kind"] == "validation"]
    config = load_config(None, {"data.path": str(example_dataset), "data.resolution": 64, "train.steps": 2,
                                "train.batch_size": 2, "data.validation_fraction": 0.25, "train.validate_every": 1,
                                "train.log_with": "none", "export.output_dir": str(tmp_path / "one")})
    events = []
    train(config, on_event=events.append)
    one = validations(events)
    assert [s for s, _ in two] == [s for s, _ in one] == [1, 2]
    assert next(e for e in events if e.kind == "started").num_validation == 3
    for (_, a), (_, b) in zip(two, one, strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), (two, one)
