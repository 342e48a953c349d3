"""Quick commands stay quick: `--help`, `jobs list`, `jobs show` and `doctor` never import the heavy libraries.

Each command runs in a fresh interpreter, as a user runs it; the test reads `sys.modules` afterwards, so it
holds on a slow or loaded machine where a timing test would not (bench/cli_speed.py has the timings).
The doctor counts caption tokens with `tokenizers` alone (trainer/models/clip_tokens.py); the last tests
check that it gives transformers' CLIPTokenizer's ids and the doctor's same findings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "gradio")

# Runs `lora-studio ARGS` in this interpreter, then prints which heavy top-level packages got imported.
PROBE = """
import json, runpy, sys
heavy = set(sys.argv[1].split(","))
sys.argv = ["lora-studio", *sys.argv[2:]]
try:
    runpy.run_module("trainer.cli", run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code
print("\\nPROBE " + json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & heavy),
                                "modules": len(sys.modules)}))
"""


def run_probe(home: Path, *args: str) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LORA_STUDIO_HOME=str(home), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    line = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, f"lora-studio {' '.join(args)} did not finish:\n{done.stdout}\n{done.stderr}"
    return json.loads(line[-1][len("PROBE "):]), done.stdout + done.stderr


@pytest.fixture
def home_with_job(tmp_path, example_dataset):
    """A home holding one finished job, made through the real Supervisor (no runner is started)."""
    from trainer.config import TrainConfig
    from trainer.jobs import Supervisor

    home = tmp_path / "home"
    sup = Supervisor(home, max_concurrent=0)  # nothing may start: the job stays queued
    config = TrainConfig()
    config.data.path = str(example_dataset)
    config.train.steps = 3
    job_id = sup.submit(config)
    assert sup.show(job_id)["status"] == "queued"
    assert sup.store.update(job_id, status="done", step=3)
    return home, job_id


@pytest.mark.parametrize("args", [("--help",), ("jobs", "--help"), ("doctor", "--help"), ("generate", "--help")])
def test_help_imports_nothing_heavy(tmp_path, args):
    result, output = run_probe(tmp_path, *args)
    assert result["code"] == 0, output
    assert "usage: lora-studio" in output
    assert result["heavy"] == [], f"`lora-studio {' '.join(args)}` imported {result['heavy']}"


def test_jobs_list_and_show_import_nothing_heavy(home_with_job):
    home, job_id = home_with_job
    listed, output = run_probe(home, "jobs", "list")
    assert listed["code"] == 0, output
    assert job_id in output and "done" in output
    assert listed["heavy"] == [], f"`jobs list` imported {listed['heavy']}"
    shown, output = run_probe(home, "jobs", "show", job_id, "--json")
    assert shown["code"] == 0, output
    assert json.loads(output[:output.index("\nPROBE ")])["status"] == "done"
    assert shown["heavy"] == [], f"`jobs show` imported {shown['heavy']}"


@pytest.mark.parametrize("base", ["tiny", "tiny-sdxl"])
def test_doctor_on_the_example_imports_nothing_heavy(tmp_path, example_dataset, base):
    result, output = run_probe(tmp_path, "doctor", str(example_dataset), "--base-model", base)
    assert result["code"] == 0, output
    assert "caption length: checked against 77 tokens" in output  # the tokenizer ran, without transformers
    assert "Result: OK" in output
    assert result["heavy"] == [], f"`doctor` imported {result['heavy']}"


def test_doctor_reads_a_diffusers_folders_tokenizer_without_transformers(tmp_path, example_dataset):
    from trainer.models.tokenizer import write_tiny_tokenizer

    model = tmp_path / "model"
    write_tiny_tokenizer(model / "tokenizer")
    for part, config in (("unet", {"sample_size": 32}), ("vae", {"block_out_channels": [1, 2, 3, 4]})):
        (model / part).mkdir()
        (model / part / "config.json").write_text(json.dumps(config))
    result, output = run_probe(tmp_path, "doctor", str(example_dataset), "--base-model", str(model), "--json")
    assert result["code"] == 0, output
    summary = json.loads(output[:output.index("\nPROBE ")])["summary"]
    assert summary["token_limit"] == 77 and summary["resolution"] == 256
    assert result["heavy"] == [], f"`doctor` imported {result['heavy']}"


CAPTIONS = [
    "a red circle on a blue background",
    "A  Photo of   a CAT, sitting; (masterpiece:1.2) best-quality!!",
    "café naïve 東京 emoji 🎨 and ünïcödé words zzqx",
    "it's the dog's ball, they'll say we've 42 cats 3.14",
    "an <|endoftext|> inside and <|startoftext|> too",
    " ".join(["lsstyle geometric mosaic of triangles"] * 20),
    "",
]


def test_caption_tokenizer_matches_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from trainer.models.clip_tokens import caption_tokenizer, caption_tokenizer_from_folder
    from trainer.models.tokenizer import tiny_vocab, write_tiny_tokenizer

    folder = write_tiny_tokenizer(tmp_path / "tokenizer")
    reference = CLIPTokenizer.from_pretrained(folder)
    for light in (caption_tokenizer(*tiny_vocab()), caption_tokenizer_from_folder(folder)):
        assert light.model_max_length == reference.model_max_length == 77
        for caption in CAPTIONS:
            ids = light(caption, truncation=False)["input_ids"]
            assert ids == reference(caption, truncation=False, verbose=False)["input_ids"], caption
            assert (light.decode(ids[3:-1], skip_special_tokens=True)
                    == reference.decode(ids[3:-1], skip_special_tokens=True)), caption


def test_caption_tokenizer_defers_to_transformers_when_not_a_clip_folder(tmp_path):
    from trainer.models.clip_tokens import caption_tokenizer_from_folder
    from trainer.models.tokenizer import write_tiny_tokenizer

    assert caption_tokenizer_from_folder(tmp_path / "missing") is None
    folder = write_tiny_tokenizer(tmp_path / "t5")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    assert caption_tokenizer_from_folder(folder) is None


def test_doctor_findings_are_those_of_clip_tokenizer(tmp_path, example_dataset):
    import shutil

    from trainer.config import TrainConfig
    from trainer.data import doctor
    from trainer.data.doctor import load_tokenizer
    from trainer.models.tokenizer import write_tiny_tokenizer

    data = tmp_path / "data"
    shutil.copytree(example_dataset, data)
    (data / "00.txt").write_text(CAPTIONS[5])  # over 77 tokens: a long-caption warning naming the cut text
    config = TrainConfig()
    light = load_tokenizer(config.model)
    assert type(light).__name__ == "CaptionTokenizer"
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tok"))
    ours, theirs = (doctor(data, config, tokenizer=t) for t in (light, reference))
    assert [f.code for f in ours.findings].count("long-caption") == 1
    assert [(f.code, f.message) for f in ours.findings] == [(f.code, f.message) for f in theirs.findings]
