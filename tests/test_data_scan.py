"""Dataset layouts: sidecar captions, kohya repeat folders, metadata.jsonl, nesting, missing captions."""

from __future__ import annotations

import json

import pytest
from data_files import write_image

from trainer.config import DataConfig
from trainer.data.scan import scan_dataset, scan_folder
from trainer.errors import DatasetError


def test_sidecar_captions_nested_folders_and_hidden_files(tmp_path):
    write_image(tmp_path / "a.png", caption="a red cat,\n sitting ")
    write_image(tmp_path / "deep" / "deeper" / "b.jpg", fmt="JPEG", caption="a blue dog")
    write_image(tmp_path / ".thumbs" / "c.png", caption="hidden")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    items = scan_dataset(DataConfig(path=str(tmp_path)))
    assert [i.image_path.name for i in items] == ["a.png", "b.jpg"]
    assert items[0].caption == "a red cat, sitting", "whitespace and newlines collapse to one line"
    assert items[1].concept == "deep" and items[1].repeats == 1


def test_kohya_repeat_folders_give_repeats_and_concept(tmp_path):
    for n in range(2):
        write_image(tmp_path / "5_mystyle" / f"{n}.png", seed=n, caption="mystyle, tree")
    write_image(tmp_path / "1_other" / "sub" / "x.png", seed=9, caption="tree")
    items = scan_dataset(DataConfig(path=str(tmp_path)))
    assert [(i.repeats, i.concept) for i in items] == [(1, "other"), (5, "mystyle"), (5, "mystyle")]
    assert sum(i.repeats for i in items) == 11


def test_metadata_jsonl_captions(tmp_path):
    write_image(tmp_path / "train" / "01.png", seed=1)
    write_image(tmp_path / "train" / "02.png", seed=2)
    lines = [{"file_name": "01.png", "text": "a sunset"}, {"file_name": "02.png", "text": "a moon"}]
    (tmp_path / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    found = scan_folder(tmp_path)
    captions = [(i.caption, i.caption_source) for i in found.items]
    assert captions == [("a sunset", "metadata"), ("a moon", "metadata")]
    assert not found.ignored and not found.orphan_captions


def test_bad_metadata_line_names_file_and_line(tmp_path):
    write_image(tmp_path / "01.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "01.png", "text": "ok"}\n{broken\n')
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2 is not valid JSON"):
        scan_dataset(DataConfig(path=str(tmp_path)))


def test_missing_caption_uses_the_default_then_the_trigger(tmp_path):
    write_image(tmp_path / "01.png")
    write_image(tmp_path / "02.png", seed=2, caption="x")
    (tmp_path / "02.caption").write_text("from the other extension")
    items = scan_dataset(DataConfig(path=str(tmp_path), trigger_word="sks"))
    assert (items[0].caption, items[0].caption_source) == ("sks", "default")
    items = scan_dataset(DataConfig(path=str(tmp_path), default_caption="a photo", trigger_word="sks"))
    assert items[0].caption == "a photo"
    items = scan_dataset(DataConfig(path=str(tmp_path), caption_extension=".caption"))
    assert [i.caption for i in items] == ["", "from the other extension"]


def test_orphans_unsupported_and_other_files_are_sorted_out(tmp_path):
    write_image(tmp_path / "01.png", caption="one")
    (tmp_path / "lost.txt").write_text("no image")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "README.md").write_text("notes")
    found = scan_folder(tmp_path)
    assert [p.name for p in found.orphan_captions] == ["lost.txt"]
    assert [p.name for p in found.unsupported] == ["anim.gif"]
    assert [p.name for p in found.ignored] == ["README.md"]


def test_missing_and_empty_folders_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="does not exist. Check data.path"):
        scan_dataset(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(DataConfig(path=str(tmp_path)))
    message = str(caught.value)
    assert str(tmp_path) in message and "1 unsupported: a.gif" in message and "10_mystyle" in message


def test_non_utf8_caption_is_named(tmp_path):
    write_image(tmp_path / "01.png")
    (tmp_path / "01.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DatasetError, match=r"01.txt cannot be read as UTF-8"):
        scan_dataset(DataConfig(path=str(tmp_path)))
