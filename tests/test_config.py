"""Config: TOML in and out, and errors that name the dotted field and the fix before any model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.config import CONFIG_VERSION, config_from_dict, load_config, save_config
from trainer.errors import ConfigError


def test_toml_round_trip_keeps_every_value_and_the_version(tmp_path):
    config = load_config(None, {"train.steps": 123, "network.rank": 4, "sample.prompts": ["a cat"]})
    path = save_config(config, tmp_path / "config.toml")
    assert f"version = {CONFIG_VERSION}" in path.read_text()
    again = load_config(path)
    assert again == config
    assert again.hash() == config.hash()


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    (tmp_path / "run.toml").write_text("[train]\nstepz = 10\n[optimizer]\nlr = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "run.toml")
    message = str(info.value)
    assert "train.stepz is not a known setting; did you mean train.steps?" in message
    assert "optimizer is not a known setting" in message
    assert "run.toml" in message


@pytest.mark.parametrize(("values", "expected"), [
    ({"optim": {"learning_rate": -1}}, "optim.learning_rate must be > 0, got -1"),
    ({"network": {"rank": 0}}, "network.rank must be 1..1024, got 0"),
    ({"train": {"batch_size": "two"}}, "train.batch_size must be a whole number, got 'two'"),
    ({"data": {"resolution": 100}}, "data.resolution must be 0 (the model's own) or a multiple of 8"),
    ({"optim": {"lr_scheduler": "cosin"}}, "optim.lr_scheduler must be constant, linear or cosine"),
    ({"export": {"name": "../evil"}}, "export.name '../evil' is not allowed: use 1-64 letters, digits"),
    ({"version": 99}, "version must be 1, got 99"),
])
def test_bad_values_name_the_field(values, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"steps": 0, "batch_size": 0}, "optim": {"learning_rate": 0}})
    assert len(info.value.problems) == 3


def test_cli_missing_data_folder_fails_fast_naming_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dataset"
    args = ["train", "--data", str(missing), "--output", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert str(missing) in result.stderr and "data.path" in result.stderr
    assert not (tmp_path / "out").exists()
    # Fails before any model loads: the same command in this process never reaches load_base.
    import trainer.loop
    from trainer.cli import main

    def load_base(*_):
        raise AssertionError("the base model was loaded before the missing dataset was refused")

    monkeypatch.setattr(trainer.loop, "load_base", load_base)
    assert main(args) == 2


def test_cli_bad_flag_value_fails_before_training(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "train", "--lr", "-3",
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "optim.learning_rate must be > 0, got -3.0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_older_than_a_new_setting_still_resumes_unless_the_run_changes_it():
    from trainer.checkpoint import resume_breaking_changes

    current = load_config().to_dict()
    saved = load_config().to_dict()
    del saved["train"]["ema_decay"], saved["data"]["class_dir"]  # written before these settings existed
    assert resume_breaking_changes(saved, current) == []
    current["train"]["ema_decay"] = 0.99
    assert resume_breaking_changes(saved, current) == ["train.ema_decay: 0.0 -> 0.99"]
