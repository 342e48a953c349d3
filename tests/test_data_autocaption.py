"""Auto-captioning for real: tiny BLIP and tiny WD14-style tagger models built and saved here, loaded back with
`load_captioner` (from_pretrained on a folder, offline), run over a copy of the example dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from captioner_models import TAGGER_TAGS, tiny_blip, tiny_tagger

from trainer.cli import main
from trainer.data.autocaption import caption_dataset, merge_caption
from trainer.data.captioners import load_captioner
from trainer.errors import DatasetError, ModelError

EXAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "example"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    return {"blip": tiny_blip(root / "blip"), "tagger": tiny_tagger(root / "tagger")}


def small_dataset(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for image in sorted(EXAMPLE.glob("*.png"))[:count]:
        shutil.copyfile(image, folder / image.name)
        shutil.copyfile(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
    return folder


def test_merge_modes_and_the_trigger_prefix():
    assert merge_caption("old words", "new words", "overwrite") == "new words"
    assert merge_caption("old words", "new words", "append") == "old words, new words"
    assert merge_caption("", "new", "append", prefix="sks") == "sks, new"
    assert merge_caption("", "a sks dog", "overwrite", prefix="sks") == "a sks dog"  # already there
    assert merge_caption("kept", "", "overwrite") == "kept"  # an empty model answer never blanks a caption


def test_blip_captions_every_image_with_the_trigger_first(models, tmp_path):
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    data = small_dataset(tmp_path / "cats")
    captioner = load_captioner(str(models["blip"]))
    assert captioner.kind == "captioner"
    seen = []
    report = caption_dataset(data, captioner, mode="overwrite", prefix="lsstyle", batch_size=2,
                             on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (2, 3), (3, 3)]
    assert len(report.written) == 3 and "Captioned 3 images in cats." in report.format()
    # the words on disk are exactly what the model itself generates for that image
    model, processor = BlipForConditionalGeneration.from_pretrained(models["blip"]), BlipProcessor.from_pretrained(
        models["blip"])
    image = sorted(data.glob("*.png"))[0]
    out = model.generate(**processor(images=[Image.open(image).convert("RGB")], return_tensors="pt"),
                         max_new_tokens=40)
    expected = " ".join(processor.batch_decode(out, skip_special_tokens=True)[0].split())
    assert expected and image.with_suffix(".txt").read_text() == f"lsstyle, {expected}"


def test_tagger_tags_over_the_threshold_without_ratings_and_modes(models, tmp_path):
    data = small_dataset(tmp_path / "shapes")
    first = sorted(data.glob("*.png"))[0]
    old = first.with_suffix(".txt").read_text().strip()
    (data / f"{sorted(data.glob('*.png'))[1].stem}.txt").unlink()  # one image without a caption
    tagger = load_captioner(str(models["tagger"]))
    assert tagger.kind == "tagger"
    report = caption_dataset(data, tagger, mode="missing")
    assert list(report.written.values()) == [TAGGER_TAGS] and len(report.kept) == 2
    assert first.with_suffix(".txt").read_text().strip() == old  # missing mode keeps what a person wrote
    caption_dataset(data, tagger, mode="append", prefix="lsstyle")
    assert first.with_suffix(".txt").read_text() == f"{old}, {TAGGER_TAGS}"  # old captions hold the trigger
    strict = load_captioner(str(models["tagger"]), threshold=0.97)
    assert strict([__import__("PIL.Image").Image.new("RGB", (40, 30))]) == ["red square"]
    with pytest.raises(DatasetError, match="not a captioning mode"):
        caption_dataset(data, tagger, mode="replace")


def test_loading_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="does not exist"):
        load_captioner(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a usable captioning model"):
        load_captioner(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"HF_HUB_OFFLINE=1 is set.*hf download"):
        load_captioner("lora-studio-tests/no-such-captioner")


def test_the_caption_command_writes_captions(models, tmp_path, capsys):
    data = small_dataset(tmp_path / "cli", count=2)
    code = main(["caption", str(data), "--model", str(models["tagger"]), "--mode", "overwrite",
                 "--prefix", "lsstyle", "--device", "cpu"])
    assert code == 0
    for image in data.glob("*.png"):
        assert image.with_suffix(".txt").read_text() == f"lsstyle, {TAGGER_TAGS}"
    assert "Captioned 2 images in cli." in capsys.readouterr().err
