"""Safe zip import: hostile archives are refused whole and leave nothing behind."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest
from data_files import noise_image

from trainer.data.archive import import_archive
from trainer.errors import DatasetError


def png_bytes(seed: int = 0) -> bytes:
    out = io.BytesIO()
    noise_image(32, 32, seed).save(out, format="PNG")
    return out.getvalue()


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                archive.writestr(data, b"../../etc/passwd")
            else:
                archive.writestr(name, data)
    return path


def assert_nothing_written(root):
    assert not root.exists() or list(root.iterdir()) == [], f"left behind: {list(root.iterdir())}"


def test_a_good_archive_is_imported_with_its_layout_and_a_report(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [
        ("10_cats/01.png", png_bytes(1)), ("10_cats/01.txt", "a cat"), ("10_cats/02.jpg", png_bytes(2)),
        ("metadata.jsonl", "{}\n"), ("notes.pdf", b"%PDF"), ("__MACOSX/10_cats/._01.png", b"x"),
        ("run.sh", "rm -rf /"),
    ])
    report = import_archive(archive, tmp_path / "datasets", "cats")
    target = tmp_path / "datasets" / "cats"
    assert report.dataset_dir == target
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "10_cats/01.png", "10_cats/01.txt", "10_cats/02.jpg", "metadata.jsonl"]
    assert (target / "10_cats" / "01.png").read_bytes() == png_bytes(1)
    skipped = dict(report.skipped)
    assert set(skipped) == {"notes.pdf", "__MACOSX/10_cats/._01.png", "run.sh"}
    assert "not a PNG, JPEG or WebP image" in skipped["run.sh"] and "skipped run.sh" in report.format()
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == ["cats"], "no staging folder left"
    with pytest.raises(DatasetError, match="already exists"):
        import_archive(archive, tmp_path / "datasets", "cats")


@pytest.mark.parametrize("name, reason", [
    ("../evil.png", "climbs out"), ("a/../../evil.png", "climbs out"), ("/etc/evil.png", "absolute path"),
    ("C:/evil.png", "absolute path"), ("C:evil.png", "absolute path"),
    ("\\\\server\\evil.png", "absolute path"),
    ("a\\..\\..\\evil.png", "climbs out"),
])
def test_zip_slip_entries_refuse_the_whole_archive(tmp_path, name, reason):
    archive = make_zip(tmp_path / "slip.zip", [("ok/01.png", png_bytes()), (name, png_bytes(1))])
    with pytest.raises(DatasetError) as caught:
        import_archive(archive, tmp_path / "datasets", "slip")
    assert reason in str(caught.value) and "slip.zip" in str(caught.value)
    assert_nothing_written(tmp_path / "datasets")
    assert not (tmp_path / "evil.png").exists()


def test_a_symlink_entry_refuses_the_whole_archive(tmp_path):
    link = zipfile.ZipInfo("01.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", [("real.png", png_bytes()), ("01.png", link)])
    with pytest.raises(DatasetError, match="is a symbolic link"):
        import_archive(archive, tmp_path / "datasets", "link")
    assert_nothing_written(tmp_path / "datasets")


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", [("01.png", png_bytes()), ("zeros.png", b"\x00" * (64 << 20))])
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DatasetError, match="would unpack to 67,") as caught:
        import_archive(bomb, tmp_path / "datasets", "bomb", max_total_bytes=16 << 20)
    assert "limit of 16,777,216" in str(caught.value)
    assert_nothing_written(tmp_path / "datasets")


def test_too_many_entries_and_a_lying_directory(tmp_path):
    many = make_zip(tmp_path / "many.zip", [(f"{n}.txt", "x") for n in range(30)] + [("a.png", png_bytes())])
    with pytest.raises(DatasetError, match="has 31 entries, more than the limit of 20"):
        import_archive(many, tmp_path / "datasets", "many", max_entries=20)
    # A central directory that under-states an entry's size: the real bytes do not get past the check.
    liar = tmp_path / "liar.zip"
    make_zip(liar, [("01.png", png_bytes()), ("02.png", b"\x01" * 100_000)], compression=zipfile.ZIP_STORED)
    data = bytearray(liar.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central-directory record: 02.png
    data[entry + 24:entry + 28] = (10).to_bytes(4, "little")
    liar.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="damaged"):
        import_archive(liar, tmp_path / "datasets", "liar")
    assert_nothing_written(tmp_path / "datasets")


def test_not_a_zip_and_bad_names(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_text("hello")
    with pytest.raises(DatasetError, match="is not a readable zip archive"):
        import_archive(fake, tmp_path / "datasets", "fake")
    good = make_zip(tmp_path / "good.zip", [("01.png", png_bytes())])
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(DatasetError, match="is not a usable dataset name"):
            import_archive(good, tmp_path / "datasets", bad)
    only_text = make_zip(tmp_path / "text.zip", [("01.txt", "caption")])
    with pytest.raises(DatasetError, match="contains no PNG, JPEG or WebP images"):
        import_archive(only_text, tmp_path / "datasets", "text")
    assert_nothing_written(tmp_path / "datasets")


def test_import_dataset_command_uses_the_studio_home(tmp_home, capsys):
    from trainer.cli import main

    archive = make_zip(tmp_home.parent / "up.zip", [("01.png", png_bytes()), ("01.txt", "a red square")])
    assert main(["import-dataset", str(archive), "--name", "shapes"]) == 0
    out = capsys.readouterr().out
    target = tmp_home / "datasets" / "shapes"
    assert f"Imported 1 image and 1 caption into {target}" in out and (target / "01.txt").is_file()
    assert main(["import-dataset", str(archive), "--name", "shapes"]) == 2, "an existing dataset is not overwritten"
    assert "already exists" in capsys.readouterr().err


def test_merge_adds_files_and_never_overwrites(tmp_path):
    datasets = tmp_path / "datasets"
    import_archive(make_zip(tmp_path / "a.zip", [("01.png", png_bytes(1)), ("01.txt", "one")]), datasets, "set")
    more = make_zip(tmp_path / "b.zip", [("sub/02.png", png_bytes(2)), ("sub/02.txt", "two"), ("04.png", png_bytes(4))])
    import_archive(more, datasets, "set", merge=True)
    target = datasets / "set"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "01.png", "01.txt", "04.png", "sub/02.png", "sub/02.txt"]
    clash = make_zip(tmp_path / "c.zip", [("03.png", png_bytes(3)), ("01.txt", "replaced?")])
    with pytest.raises(DatasetError, match="already has 01.txt"):
        import_archive(clash, datasets, "set", merge=True)
    assert (target / "01.txt").read_text() == "one" and not (target / "03.png").exists()
    assert [p.name for p in datasets.iterdir()] == ["set"], "no staging folder left"
    (datasets / "empty").mkdir()
    import_archive(more, datasets, "empty")
    assert (datasets / "empty" / "sub" / "02.png").is_file(), "an empty folder counts as new"


def test_a_zip_of_one_folder_imports_its_files_without_nesting_that_folder(tmp_path):
    folded = make_zip(tmp_path / "cats.zip", [
        ("cats/", b""), ("cats/01.png", png_bytes(1)), ("cats/01.txt", "a cat"), ("cats/sub/02.png", png_bytes(2)),
        ("__MACOSX/cats/._01.png", b"x"), ("notes.pdf", b"%PDF")])
    report = import_archive(folded, tmp_path / "datasets", "mine")
    dest = tmp_path / "datasets" / "mine"
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "01.png", "01.txt", "sub/02.png"]
    assert report.images == ["01.png", "sub/02.png"] and report.captions == ["01.txt"]
    # a kohya repeat folder keeps its name (it sets the repeats), and two top folders stay as they are
    kohya = make_zip(tmp_path / "k.zip", [("10_cats/01.png", png_bytes(1))])
    import_archive(kohya, tmp_path / "datasets", "kohya")
    assert (tmp_path / "datasets" / "kohya" / "10_cats" / "01.png").is_file()
    two = make_zip(tmp_path / "two.zip", [("a/01.png", png_bytes(1)), ("b/02.png", png_bytes(2))])
    import_archive(two, tmp_path / "datasets", "two")
    assert (tmp_path / "datasets" / "two" / "a" / "01.png").is_file()
