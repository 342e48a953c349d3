"""Prior preservation on the tiny model: class images drawn once and reused, weighted in the batches at
train.prior_loss_weight, resumed exactly, reported apart by the doctor, and bad settings refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.data_files import truncated_png
from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.loop import train

RUN = {"data.resolution": 64, "train.steps": 8, "train.batch_size": 1, "export.dtype": "float32",
       "train.log_with": "none", "train.save_every": 4, "export.name": "prior", "data.trigger_word": "zwx",
       "data.class_prompt": "a photo of a cat", "data.num_class_images": 2, "data.class_steps": 2}


def run(data, out, cache, resume_from=None, **overrides):
    config = load_config(None, {**RUN, "data.path": str(data), "export.output_dir": str(out),
                                "data.cache_dir": str(cache), **overrides})
    events = []
    result = train(config, on_event=events.append, resume_from=resume_from)
    return config, result, events


def class_event(events):
    return next(e for e in events if e.kind == "class_images")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, two_images):
    """Two runs sharing one cache: the first draws 2 class images (weight 1), the second reuses them (weight 0.5)."""
    cache = tmp_path_factory.mktemp("cache")
    first = run(two_images, tmp_path_factory.mktemp("first"), cache)
    folder = class_event(first[2]).folder
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(Path(folder).iterdir())}
    second = run(two_images, tmp_path_factory.mktemp("second"), cache, **{"train.prior_loss_weight": 0.5})
    return cache, first, second, stamps


def test_class_images_are_drawn_once_into_the_cache_and_reused(runs):
    cache, (_, _, first_events), (_, _, second_events), stamps = runs
    made, reused = class_event(first_events), class_event(second_events)
    assert (made.images, made.generated, made.samples_per_epoch) == (2, 2, 2)
    assert (reused.images, reused.generated) == (2, 0) and reused.folder == made.folder
    folder = Path(made.folder)
    assert folder.parent == cache / "class_images"
    assert sorted(stamps) == ["00000.png", "00000.txt", "00001.png", "00001.txt", "manifest.json"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())} == stamps
    assert (folder / "00000.txt").read_text() == "a photo of a cat"


def test_class_examples_enter_the_batches_at_the_prior_loss_weight(runs):
    """An epoch is 2 training + 2 class samples. Until the first class step the runs are the same; there the
    weight-0.5 run's loss is exactly half the weight-1 run's (the same example, noise and LoRA)."""
    _, (_, first, _), (_, second, _), _ = runs
    assert len(first.losses) == 8
    k = next(i for i, (a, b) in enumerate(zip(first.losses, second.losses, strict=True)) if a != b)
    assert first.losses[:k] == second.losses[:k]
    assert second.losses[k] == 0.5 * first.losses[k] > 0


def test_resume_with_class_images_is_exact(runs, tmp_path, two_images):
    cache, (config, _, _), _, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(config.export.output_dir, copy)
    _, resumed, events = run(two_images, copy, cache, resume_from=copy / "checkpoints" / "step-4")
    assert class_event(events).generated == 0 and resumed.step == 8
    final, again = (load_file(f"{d}/prior.peft.safetensors") for d in (config.export.output_dir, copy))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_class_captions_keep_no_trigger_word_and_batches_carry_weights(runs, two_images):
    import numpy as np

    from trainer.data import check_dataset
    from trainer.models import load_base
    from trainer.prior import PriorExampleSet

    _, (config, _, events), _, _ = runs
    config.data.class_dir, config.data.num_class_images = class_event(events).folder, 0
    items, report = check_dataset(config, tokenizer=None)
    class_items = report.class_images.items
    examples = PriorExampleSet(load_base(config.model), items, class_items, config.data, 64, torch.device("cpu"),
                               torch.float32, True, 0.25, config.train.seed)
    assert [ex.caption for ex in examples.examples[2:]] == ["a photo of a cat"] * 2
    assert all(ex.caption.startswith("zwx") for ex in examples.examples[:2])
    assert sorted(examples.index) == [0, 1, 2, 3]
    assert examples.epoch_batches(3, 1, 42) == examples.epoch_batches(3, 1, 42)  # a pure function of the epoch
    batch = examples.batch([0, 2, 3, 1], np.random.default_rng(0))
    assert batch.weight.tolist() == [1.0, 0.25, 0.25, 1.0]


def test_the_doctor_reports_class_images_apart(runs, two_images, tmp_path, capsys):
    from trainer.cli import main
    from trainer.data import DatasetRefused, check_dataset

    _, (_, _, events), _, _ = runs
    folder = tmp_path / "class"
    shutil.copytree(class_event(events).folder, folder)
    (folder / "manifest.json").unlink()
    for index in range(3):
        shutil.copy(folder / "00000.png", folder / f"extra{index}.png")  # 5 class images for 2 training samples
    assert main(["doctor", str(two_images), "--class-dir", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "Class images (prior preservation)" in text and "[class-images-unused]" in text
    config = load_config(None, {"data.path": str(two_images), "data.class_dir": str(folder)})
    _, report = check_dataset(config, tokenizer=None)
    assert (report.summary["images"], report.class_images.summary["images"]) == (2, 5)
    assert not any(f.code.startswith("class") for f in report.findings)
    assert report.to_dict()["class_images"]["summary"]["class_samples_per_epoch"] == 2
    truncated_png(folder / "broken.png")
    with pytest.raises(DatasetRefused) as refused:
        check_dataset(config, tokenizer=None)
    assert not refused.value.report.errors  # the training images are fine; the class folder is refused
    assert [f.path for f in refused.value.report.class_images.errors] == [str(folder / "broken.png")]


def test_the_doctor_says_class_images_will_be_drawn(two_images, tmp_path):
    from trainer.data import check_dataset

    config = load_config(None, {**RUN, "data.path": str(two_images), "data.cache_dir": str(tmp_path)})
    _, report = check_dataset(config, tokenizer=None)
    assert [f.code for f in report.class_images.findings] == ["class-images-to-generate"]
    assert "class images to generate: 2" in report.format()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data.num_class_images": 3}, "data.num_class_images = 3 needs data.class_prompt"),
    ({"data.class_prompt": "a dog"}, "data.class_prompt is set but no class images are used"),
    ({"data.class_dir": "reg", "data.class_prompt": "a dog", "data.num_class_images": 3},
     "data.num_class_images asks for generated class images, but data.class_dir"),
    ({"train.prior_loss_weight": -1.0}, "train.prior_loss_weight must be >= 0"),
    ({"data.class_dir": "datasets/example"}, "data.class_dir is the training folder"),
    ({"data.class_prompt": "a dog", "data.num_class_images": 2, "data.class_steps": 0},
     "data.class_steps must be 1..200"),
])
def test_bad_prior_settings_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_the_form_names_a_class_dataset_never_a_free_path(tmp_path):
    from app import forms
    from app.security import SecurityError
    from trainer.config import TrainConfig

    values = {**forms.config_to_values(TrainConfig()), "data.class_dir": "dogs", "train.prior_loss_weight": "0.5"}
    config = forms.values_to_config(values, tmp_path, dataset="cats")
    assert config.data.class_dir == str((tmp_path / "datasets" / "dogs").resolve())
    assert config.train.prior_loss_weight == 0.5
    assert forms.values_to_config(forms.config_to_values(config), tmp_path, dataset="cats") == config
    assert "Prior preservation" in forms._help("train.prior_loss_weight")
    with pytest.raises(SecurityError):
        forms.values_to_config({**values, "data.class_dir": "../../etc"}, tmp_path, dataset="cats")


def test_class_images_decode_in_the_unet_dtype_without_touching_the_training_models():
    """SDXL's VAE encodes in float32 under fp16 (a GPU case): drawing uses a half-precision copy of the VAE, and
    leaves the training UNet's and VAE's dtypes alone (diffusers' from_pipe would cast them)."""
    from trainer.config import ModelConfig
    from trainer.generate.render import render
    from trainer.models import load_base
    from trainer.prior import _decoding_pipe

    base = load_base(ModelConfig(base_model="tiny-sdxl"))
    for name in ("unet", *base.family.text_encoder_names):
        getattr(base.pipe, name).to(dtype=torch.bfloat16)
    pipe = _decoding_pipe(base)
    assert pipe.vae.dtype == torch.bfloat16 and pipe.unet is base.pipe.unet
    assert render(pipe, "a photo of a cat", steps=1, width=64, height=64)[0].size == (64, 64)
    assert (base.pipe.unet.dtype, base.pipe.vae.dtype) == (torch.bfloat16, torch.float32)


def test_a_job_pins_the_class_and_validation_folders_to_absolute_paths(tmp_path, monkeypatch):
    """The runner works in the job folder, so a relative data.class_dir (or data.validation_dir) is resolved
    where the job was submitted."""
    from trainer.jobs.paths import JobFiles
    from trainer.jobs.supervisor import pin_paths

    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"data.class_dir": "reg/dogs", "data.validation_dir": "held-out",
                                "train.validate_every": 10})
    pinned = pin_paths(config, JobFiles(tmp_path / "jobs" / "1"))
    assert pinned.data.class_dir == str(tmp_path.resolve() / "reg" / "dogs")
    assert pinned.data.validation_dir == str(tmp_path.resolve() / "held-out")
