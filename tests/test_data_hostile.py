"""Hostile and unlucky dataset files: zip bombs by ratio, merges through symlinked folders or onto existing
files (the web UI's add-to-dataset too), and captions too long to be captions. All with real files."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from data_files import noise_image

from trainer.config import load_config
from trainer.data import doctor
from trainer.data.archive import import_archive
from trainer.data.scan import scan_dataset
from trainer.errors import DatasetError
from trainer.names import MAX_CAPTION_CHARS


def png_bytes(seed: int = 0) -> bytes:
    out = io.BytesIO()
    noise_image(32, 32, seed).save(out, format="PNG")
    return out.getvalue()


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_a_zip_that_expands_a_thousand_times_is_refused_by_ratio(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("01.png", png_bytes())
        with archive.open("zeros.png", "w", force_zip64=True) as sink:
            block = b"\x00" * (1 << 20)
            for _ in range(256):  # 256 MiB of zeros, well under the 4 GiB total cap
                sink.write(block)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=r"times its own size \(more than 100x") as err:
        import_archive(bomb, tmp_path / "datasets", "bomb")
    assert str(bomb) in str(err.value)
    assert files_under(tmp_path / "datasets") == []


def test_a_directory_that_hides_a_bomb_is_stopped_while_extracting(tmp_path):
    """The central directory claims 1,000 bytes for 64 MiB of zeros: the real bytes never land."""
    liar = make_zip(tmp_path / "liar.zip", [("01.png", png_bytes()), ("02.png", b"\x00" * (64 << 20))])
    data = bytearray(liar.read_bytes())
    entry = data.rfind(b"PK\x01\x02")
    data[entry + 24:entry + 28] = (1000).to_bytes(4, "little")
    liar.write_bytes(bytes(data))
    with pytest.raises(DatasetError):
        import_archive(liar, tmp_path / "datasets", "liar")
    assert files_under(tmp_path / "datasets") == []


def test_captions_over_the_limit_are_refused_in_a_zip(tmp_path):
    long_one = make_zip(tmp_path / "long.zip", [("01.png", png_bytes()), ("01.txt", "cat " * 5_000)])
    with pytest.raises(DatasetError, match="caption '01.txt' of 20,000 bytes; captions are at most 2,000"):
        import_archive(long_one, tmp_path / "datasets", "long")
    assert files_under(tmp_path / "datasets") == []


def test_a_ten_megabyte_caption_is_refused_unread_by_the_scan_and_the_doctor(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    noise_image(64, 64, 1).save(folder / "01.png")
    (folder / "01.txt").write_text("a cat")
    noise_image(64, 64, 2).save(folder / "02.png")
    (folder / "02.txt").write_bytes(b"cat " * (10 << 18))  # 10 MiB
    (folder / "03.png").write_bytes((folder / "01.png").read_bytes())
    (folder / "03.txt").write_text("dog " * 600)  # small enough to read, 2,399 characters: over the limit
    config = load_config(None, {"data.path": str(folder), "data.resolution": 64})
    with pytest.raises(DatasetError, match="02.txt is 10,485,760 bytes, too long for a caption"):
        scan_dataset(config.data)
    start = time.monotonic()
    report = doctor(folder, config, tokenizer=None)
    assert time.monotonic() - start < 20
    bad = {Path(e.path).name: e.message for e in report.errors if "caption" in e.message}
    assert set(bad) >= {"02.txt", "03.txt"}, report.format()
    assert f"more than the caption limit of {MAX_CAPTION_CHARS:,}" in bad["03.txt"]


def test_a_merge_never_writes_through_a_symlinked_sub_folder(tmp_path):
    datasets, outside = tmp_path / "datasets", tmp_path / "outside"
    outside.mkdir()
    import_archive(make_zip(tmp_path / "a.zip", [("01.png", png_bytes(1))]), datasets, "set")
    (datasets / "set" / "sub").symlink_to(outside, target_is_directory=True)
    # (a top-level file too: a zip of the one folder `sub/` would import its files without that folder)
    more = make_zip(tmp_path / "b.zip", [("sub/02.png", png_bytes(2)), ("sub/02.txt", "two"), ("03.png", png_bytes(3))])
    with pytest.raises(DatasetError, match="links outside it, so sub/02.png, sub/02.txt would be written"):
        import_archive(more, datasets, "set", merge=True)
    assert list(outside.iterdir()) == []
    assert files_under(datasets) == ["set", "set/01.png", "set/sub"], "no staging folder left"


def test_the_uis_add_to_dataset_refuses_a_clash_and_names_the_files(tmp_path):
    from app.datasets_tab import import_files
    from app.studio import Studio

    studio = Studio(tmp_path / "home")
    first = make_zip(tmp_path / "one.zip", [("01.png", png_bytes(1)), ("01.txt", "the original caption")])
    assert "Imported 1 image" in import_files(studio, "cats", [str(first)])
    target = studio.datasets_dir / "cats"
    original = (target / "01.png").read_bytes()
    clash = make_zip(tmp_path / "two.zip", [("01.png", png_bytes(9)), ("01.txt", "replaced"), ("02.png", png_bytes(2))])
    with pytest.raises(DatasetError, match="already has 01.png, 01.txt"):
        import_files(studio, "cats", [str(clash)])
    assert (target / "01.png").read_bytes() == original
    assert (target / "01.txt").read_text() == "the original caption"
    assert not (target / "02.png").exists()
    more = make_zip(tmp_path / "three.zip", [("02.png", png_bytes(2)), ("02.txt", "a second cat")])
    assert "Imported 1 image and 1 caption into cats" in import_files(studio, "cats", [str(more)])
    assert files_under(target) == ["01.png", "01.txt", "02.png", "02.txt"]
