"""Every bad value gets a specific error naming the field and the fix, never a traceback: through the real
CLI (`train`, `jobs submit`, `import-dataset`), the config loader and a diffusers folder's model_index.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.errors import ConfigError, ModelError
from trainer.models.loading import load_base

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "datasets" / "example"


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LORA_STUDIO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def refused(run: subprocess.CompletedProcess, *expected: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    for text in expected:
        assert text in run.stderr, (text, run.stderr)


@pytest.mark.parametrize("line, expected", [
    ("[train]\nseed = 4294967296", "train.seed must be a whole number from 0 to 4,294,967,295"),
    ("[train]\nseed = -1", "train.seed must be a whole number from 0 to"),
    ("[sample]\nseed = 99999999999", "sample.seed must be a whole number from 0 to"),
    ("[optim]\nlearning_rate = inf", "optim.learning_rate must be a finite number, got inf"),
    ("[optim]\nlearning_rate = nan", "optim.learning_rate must be a finite number, got nan"),
    ("[network]\nalpha = inf", "network.alpha must be a finite number, got inf"),
    ("[train]\nnoise_offset = -nan", "train.noise_offset must be a finite number"),
    ('[export]\nname = "' + "x" * 300 + '"', "(300 characters) is not allowed: use 1-64 letters"),
    ('[export]\nname = "a..b"', "export.name 'a..b' is not allowed"),
    ('[export]\nname = "cats\\n"', "export.name 'cats\\n' is not allowed"),
])
def test_bad_numbers_and_names_in_a_config_name_the_field(tmp_path, line, expected):
    path = tmp_path / "run.toml"
    path.write_text(f'[data]\npath = "{EXAMPLE}"\n{line}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value), str(err.value)


def test_the_cli_refuses_bad_names_and_values_before_loading_anything(tmp_path):
    home = tmp_path / "home"
    run = cli("train", "--data", str(EXAMPLE), "--steps", "1", "--name", "n" * 300, home=home)
    refused(run, "export.name", "(300 characters) is not allowed")
    refused(cli("train", "--data", str(EXAMPLE), "--steps", "1", "--name", "a..b", home=home), "'a..b'")
    refused(cli("train", "--data", str(EXAMPLE), "--steps", "1", "--seed", str(2**32), home=home), "train.seed")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[data]\npath = "{EXAMPLE}"\n[export]\nname = "line\\nbreak"\n')
    refused(cli("jobs", "submit", str(bad), "--home", str(home), home=home), "export.name 'line\\nbreak'")
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLE / sorted(p.name for p in EXAMPLE.glob("*.png"))[0], "01.png")
    for name in ("a..b", "cats\n", "x" * 65):
        refused(cli("import-dataset", str(archive), "--name", name, home=home), "is not a usable dataset name")
    assert not (home / "datasets").exists() or list((home / "datasets").iterdir()) == []


def test_a_job_for_a_dataset_that_does_not_exist_is_refused_not_queued(tmp_path):
    home = tmp_path / "home"
    config = tmp_path / "run.toml"
    missing = tmp_path / "no-such-dataset"
    config.write_text(f'[data]\npath = "{missing}"\n[train]\nsteps = 1\n')
    refused(cli("jobs", "submit", str(config), "--home", str(home), home=home),
            f"{missing} does not exist (data.path)", "lora-studio import-dataset")
    listed = cli("jobs", "list", "--json", "--home", str(home), home=home)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout + listed.stderr


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    from trainer.models.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("model") / "sd15"
    build_tiny_pipeline("sd15").save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("edit, expected", [
    (lambda index: "not json{", "is not readable JSON"),
    (lambda index: [index], "must be a JSON table, got list"),
    (lambda index: {**index, "_class_name": ["StableDiffusionPipeline"]}, "holds a ['StableDiffusionPipeline']"),
    (lambda index: {**index, "unet": ["os", "system"]}, "has a component 'unet' of [\"os\", \"system\"]"),
    (lambda index: {**index, "unet": "UNet2DConditionModel"}, "has a component 'unet'"),
    (lambda index: {**index, "vae": ["diffusers", "NoSuchModel"]}, "could not be loaded"),
    (lambda index: {**index, "scheduler": ["diffusers", "AutoencoderKL", "extra"]}, "component 'scheduler'"),
])
def test_a_model_index_with_odd_fields_is_a_model_error(diffusers_folder, tmp_path, edit, expected):
    import shutil

    from trainer.config import ModelConfig

    folder = tmp_path / "model"
    shutil.copytree(diffusers_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    changed = edit(index)
    (folder / "model_index.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ModelError) as err:
        load_base(ModelConfig(base_model=str(folder)))
    assert expected in str(err.value) and "model" in str(err.value), str(err.value)
