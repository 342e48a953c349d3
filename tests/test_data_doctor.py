"""The dataset doctor on a dataset of hostile files made here: one report line each, errors vs warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_files import exif_rotated_jpeg, huge_png_header, noise_image, truncated_png, write_image
from PIL import Image

from trainer.config import TrainConfig
from trainer.data import DatasetRefused, check_dataset, doctor

ROOT = Path(__file__).resolve().parents[1]
BAD = {"truncated.png", "notes.png", "bomb.png"}


@pytest.fixture(scope="module")
def tokenizer():
    from trainer.data.doctor import load_tokenizer

    return load_tokenizer(TrainConfig().model)


@pytest.fixture
def hostile(tmp_path) -> Path:
    root = tmp_path / "ds"
    for n in range(3):
        write_image(root / "5_mystyle" / f"{n}.png", seed=n, caption=f"sks, red circle, star {n}")
    truncated_png(root / "truncated.png")
    (root / "notes.png").write_text("shopping list: eggs")
    huge_png_header(root / "bomb.png")
    Image.new("CMYK", (160, 160), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=90)
    exif_rotated_jpeg(root / "phone.jpg")
    rgba = Image.new("RGBA", (160, 160), (0, 0, 255, 128))
    rgba.save(root / "rgba.png")
    write_image(root / "nocap.png", seed=10)
    write_image(root / "long.png", seed=11, caption=" ".join(["red"] * 118))
    shutil.copy(root / "5_mystyle" / "0.png", root / "dup.png")
    (root / "dup.txt").write_text("sks, copy")
    for name in ("cmyk", "phone", "rgba"):
        (root / f"{name}.txt").write_text(f"sks, {name}")
    return root


def by_code(report) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in report.findings:
        found.setdefault(finding.code, set()).add(Path(finding.path).name)
    return found


def test_each_hostile_file_gets_its_report_line(hostile, tokenizer):
    config = TrainConfig()
    config.data.trigger_word = "sks"
    config.train.batch_size = 2
    report = doctor(hostile, config, tokenizer=tokenizer)
    codes = by_code(report)
    assert not report.ok and {Path(f.path).name for f in report.errors} == BAD
    assert codes["bad-image"] == BAD
    assert codes["missing-caption"] == {"nocap.png"}
    assert codes["long-caption"] == {"long.txt"}
    duplicate = next(f for f in report.findings if f.code == "duplicate")
    assert {Path(duplicate.path).name, Path(duplicate.message.split()[-1]).name} == {"0.png", "dup.png"}
    assert codes["small-image"] == {"phone.jpg"}, "the 20x40 photo is below 128 px; the 160 px ones are not"
    assert codes["no-trigger"] == {"long.txt"}
    assert "near-duplicate" not in codes, "random images are not near duplicates of each other"
    long_line = next(f for f in report.findings if f.code == "long-caption")
    # 118 words + start and end tokens = 120, plus "sks," prepended = 122 tokens as trained.
    assert "is 122 tokens; the text encoder reads 77" in long_line.message
    text = report.format()
    for name in BAD | {"nocap.png", "long.txt", "dup.png"}:
        assert name in text
    assert "REFUSED: 3 errors" in text and "ERRORS (training is refused): 3" in text
    summary = report.summary
    assert summary["images"] == 9 and summary["concepts"]["mystyle"] == {"images": 3, "repeats": 5}
    assert summary["samples_per_epoch"] == 3 * 5 + 6
    assert summary["buckets"] == {"64x192": 1, "128x128": 8}, "the 20x40 photo gets a tall bucket"
    assert summary["steps_per_epoch"] == 10 + 1, "20 samples in 128x128 and 1 in 64x192, at batch size 2"


def test_skip_bad_images_drops_and_lists_them(hostile, tokenizer):
    config = TrainConfig()
    config.data.skip_bad_images = True
    report = doctor(hostile, config, tokenizer=tokenizer)
    assert report.ok and {p.name for p in report.skipped} == BAD
    assert {Path(f.path).name for f in report.warnings if f.code == "skipped"} == BAD
    assert BAD.isdisjoint(i.image_path.name for i in report.items) and len(report.items) == 9
    assert "3 files skipped" in report.format()


def test_check_dataset_refuses_with_the_same_report(hostile, tokenizer):
    config = TrainConfig()
    config.data.path = str(hostile)
    with pytest.raises(DatasetRefused) as caught:
        check_dataset(config, tokenizer=tokenizer)
    assert caught.value.report.format() in str(caught.value) and "--skip-bad-images" in str(caught.value)


def test_near_duplicates_orphans_unsupported_and_trigger_note(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "a.png", 256, 256, seed=1, caption="a red cat")
    noise_image(256, 256, seed=1).resize((200, 200)).save(root / "a-small.jpg", quality=85)
    (root / "a-small.txt").write_text("a red cat")
    write_image(root / "b.png", 256, 256, seed=2, caption="")
    (root / "lost.txt").write_text("no image")
    (root / "clip.gif").write_bytes(b"GIF89a")
    config = TrainConfig()
    config.data.trigger_word = "ohwx"
    report = doctor(root, config, tokenizer=None)
    codes = by_code(report)
    near = [f for f in report.findings if f.code == "near-duplicate"]
    assert len(near) == 1 and {Path(near[0].path).name, Path(near[0].message.split()[5]).name} == {
        "a.png", "a-small.jpg"}
    assert codes["empty-caption"] == {"b.txt"}
    assert codes["orphan-caption"] == {"lost.txt"} and codes["bad-image"] == {"clip.gif"}
    assert codes["trigger-prepended"] and report.summary["token_limit"] is None
    assert "caption length: not checked" in report.format()


def test_missing_folder_is_one_error(tmp_path):
    report = doctor(tmp_path / "nope", TrainConfig(), tokenizer=None)
    assert not report.ok and report.errors[0].code == "no-dataset" and "does not exist" in report.format()


def run_cli(*args, cwd=ROOT):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_command_exit_codes_and_json(hostile, capsys):
    refused = run_cli("doctor", hostile, "--trigger-word", "sks")
    assert refused.returncode == 1, refused.stderr
    assert "truncated.png" in refused.stdout and "is 122 tokens" in refused.stdout
    # The same entry point in this process (a second interpreter start costs seconds on a busy CI box).
    from trainer.cli import main

    assert main(["doctor", str(hostile), "--skip-bad-images", "--json", "--no-bucketing"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and len(data["skipped"]) == 3 and data["summary"]["buckets"] == {"128x128": 9}
    assert data["summary"]["steps_per_epoch"] == 21 and data["summary"]["num_processes"] == 1
    assert main(["doctor", str(hostile), "--skip-bad-images", "--no-bucketing", "--gpus", "0,1"]) == 0
    text = capsys.readouterr().out
    # 21 samples, 2 a step: 10 steps; the last one alone cannot give both processes one, so it sits that epoch out
    assert "steps per epoch at batch size 1 on 2 processes (2 x the batch per step): 10 " in text, text


def _header_only_checkpoint(path: Path, family: str) -> Path:
    """A real-width (320-channel) single file with just the keys that tell its family: the doctor reads
    only the safetensors header, as a single-file load does before it picks its configs."""
    import torch
    from safetensors.torch import save_file

    markers = {"sd15": "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
               "sdxl": "conditioner.embedders.1.model.positional_embedding"}
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3, dtype=torch.float16),
               markers[family]: torch.zeros(1)}, str(path))
    return path


def test_the_resolution_is_read_from_the_model_not_guessed_from_its_name(tmp_path):
    from families_helpers import write_single_file

    from trainer.config import ModelConfig
    from trainer.models import load_base
    from trainer.models.tiny import save_tiny_model

    data = tmp_path / "ds"
    write_image(data / "a.png", 64, 64, caption="a")
    sd15 = _header_only_checkpoint(tmp_path / "realisticVisionV20.safetensors", "sd15")  # "v2" in the name
    sdxl = _header_only_checkpoint(tmp_path / "illustrious.safetensors", "sdxl")  # no "xl" in the name
    tiny_file = write_single_file("sdxl", tmp_path / "sdxl-v2-768.safetensors")
    folder = save_tiny_model("sd2", tmp_path / "my-sd2-768")
    expected = {str(sd15): 512, str(sdxl): 1024, str(tiny_file): 128, str(folder): 128}
    for model, size in expected.items():
        config = TrainConfig()
        config.model.base_model = model
        report = doctor(data, config, tokenizer=None)
        assert report.summary["resolution"] == size, model
        assert "resolution-guessed" not in by_code(report)
    for model in (tiny_file, folder):  # exactly what the loop gets from the loaded model
        assert load_base(ModelConfig(base_model=str(model))).default_resolution == expected[str(model)]

    config = TrainConfig()
    config.model.base_model = "nobody/not-in-the-cache-xl-v2"
    report = doctor(data, config, tokenizer=None)
    assert report.summary["resolution"] == 512 and "resolution-guessed" in by_code(report)
    assert "data.resolution" in next(f.message for f in report.findings if f.code == "resolution-guessed")

    (tmp_path / "model.ckpt").write_bytes(b"not read")  # a pickle's keys would need every weight loaded
    config.model.base_model, config.model.allow_pickle = str(tmp_path / "model.ckpt"), True
    note = next(f.message for f in doctor(data, config, tokenizer=None).findings if f.code == "resolution-guessed")
    assert "pickle" in note and "data.resolution" in note
