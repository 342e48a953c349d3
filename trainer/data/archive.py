"""Import an uploaded `.zip` dataset into `<home>/datasets/<name>/` without trusting anything in it.

    report = import_archive("upload.zip", home / "datasets", "cats")
    print(report.format())     # what was imported and what was skipped, and why

The whole archive is refused if any entry could write outside the target (`..`, an absolute path, a
drive letter) or is a symlink, if the entry count or total uncompressed size is over its cap, if it
expands more than `MAX_RATIO` times its own size (a zip bomb), or if a caption is longer than
`MAX_CAPTION_CHARS`; all of that is checked from the zip's directory before one byte is written, and
the byte counts are enforced again while extracting (the directory's sizes are not trusted). A merge
into an existing dataset never replaces a file and never writes through a symlinked sub-folder.
Files that are neither images nor captions are skipped and listed. Extraction goes to a hidden
temporary folder beside the target and is renamed into place only when complete, so a failure leaves
nothing half written.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainer.data.images import IMAGE_EXTENSIONS
from trainer.errors import DatasetError
from trainer.fileio import disk_error
from trainer.names import MAX_CAPTION_BYTES, MAX_CAPTION_CHARS, NAME_RULE, is_name

MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_RATIO = 100
"""Most an archive may expand over its own size; images are already compressed, captions are small."""
RATIO_FLOOR = 8 * 1024**2
"""An archive may always unpack to this much, whatever its ratio (a few captions compress well)."""
CAPTION_FILES = (".txt", ".caption")
_REPEAT_FOLDER = re.compile(r"^\d+_")
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass
class ImportReport:
    """What `import_archive` wrote: the dataset folder, the files kept, and the skipped ones with reasons."""

    dataset_dir: Path
    images: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        images, captions = len(self.images), len(self.captions)
        head = (f"Imported {images} image{'s' * (images != 1)} and {captions} caption{'s' * (captions != 1)} "
                f"into {self.dataset_dir}")
        lines = [head]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def import_archive(zip_path: str | Path, dest_root: str | Path, name: str, max_entries: int = MAX_ENTRIES,
                   max_total_bytes: int = MAX_TOTAL_BYTES, merge: bool = False) -> ImportReport:
    """Extract the images and captions of `zip_path` into `dest_root/name`; DatasetError refuses it.

    With `merge`, the files are added to an existing dataset; an archive that would overwrite any file
    there is refused whole.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    if not is_name(name):
        raise DatasetError(f"is not a usable dataset name: {name!r}", where=str(zip_path),
                           fix=NAME_RULE[0].upper() + NAME_RULE[1:] + ".")
    target = dest_root / name
    if target.exists() and not merge and any(target.iterdir()):
        raise DatasetError("already exists", where=str(target),
                           fix="Choose another dataset name, delete the existing dataset, or add to it (merge).")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"is not a readable zip archive ({err})", where=str(zip_path),
                           fix="Upload a .zip of the dataset folder.") from err
    with archive:
        ratio_bytes = max(MAX_RATIO * zip_path.stat().st_size, RATIO_FLOOR)
        plan, report = _plan(archive, zip_path, max_entries, max_total_bytes, ratio_bytes)
        report.dataset_dir = target
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=dest_root))
        try:
            _extract(archive, plan, staging, zip_path, min(max_total_bytes, ratio_bytes))
            _place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return report


def _place(staging: Path, target: Path) -> None:
    """Rename the finished folder into place, or move its files into an existing one (never overwriting)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    root = target.resolve()
    outside = [str(rel) for rel in files if not (target / rel).parent.resolve().is_relative_to(root)]
    if outside:  # a sub-folder of the dataset is a symlink out of it: writing there would land elsewhere
        raise DatasetError(f"has a sub-folder that links outside it, so {_few(outside)} would be written "
                           "elsewhere", where=str(target),
                           fix="Replace the linked sub-folder with a real folder, or rename it in the archive.")
    clashes = [str(rel) for rel in files if os.path.lexists(target / rel)]
    if clashes:
        raise DatasetError(f"already has {_few(clashes)}", where=str(target),
                           fix="Rename those files in the archive, or delete them from the dataset first.")
    for rel in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        _move_new(staging / rel, target / rel)
    shutil.rmtree(staging, ignore_errors=True)


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _move_new(source: Path, dest: Path) -> None:
    """Move `source` to `dest` only if `dest` does not exist: a hard link fails rather than replace a file
    that appeared since the check (a rename would silently overwrite it)."""
    try:
        os.link(source, dest, follow_symlinks=False)
    except FileExistsError as err:
        raise DatasetError("appeared while the archive was being added; it was kept", where=str(dest),
                           fix="Add the archive again once nothing else writes to the dataset.") from err
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise
        os.rename(source, dest)  # a filesystem without hard links: the check above is all there is
        return
    os.unlink(source)


def _plan(archive: zipfile.ZipFile, zip_path: Path, max_entries: int, max_total_bytes: int,
          ratio_bytes: int) -> tuple[list[tuple[zipfile.ZipInfo, PurePosixPath]], ImportReport]:
    """Check every entry from the directory alone; return the (entry, relative path) pairs to write."""
    entries = archive.infolist()
    if len(entries) > max_entries:
        raise DatasetError(f"has {len(entries):,} entries, more than the limit of {max_entries:,}",
                           where=str(zip_path), fix="Split the dataset into smaller archives.")
    total = sum(info.file_size for info in entries)
    if total > max_total_bytes:
        raise DatasetError(f"would unpack to {total:,} bytes, more than the limit of {max_total_bytes:,}",
                           where=str(zip_path), fix="Upload a smaller dataset (or downscale the images).")
    if total > ratio_bytes:
        ratio = total / max(zip_path.stat().st_size, 1)
        raise DatasetError(f"would unpack to {total:,} bytes, {ratio:,.0f} times its own size (more than "
                           f"{MAX_RATIO}x: a zip bomb, or padding)", where=str(zip_path),
                           fix="Zip the dataset's images and captions themselves.")
    report = ImportReport(dataset_dir=Path())
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: set[str] = set()
    for info in entries:
        relative = _safe_relative(info, zip_path)
        if info.is_dir():
            continue
        if any(part in _JUNK or f"{part}/" in _JUNK for part in relative.parts):
            report.skipped.append((info.filename, "operating-system metadata"))
            continue
        suffix = relative.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            report.images.append(str(relative))
        elif suffix in CAPTION_FILES or relative.name == "metadata.jsonl":
            if suffix in CAPTION_FILES and info.file_size > MAX_CAPTION_BYTES:
                raise _long_caption(info.filename, info.file_size, zip_path)
            report.captions.append(str(relative))
        else:
            report.skipped.append((info.filename, "not a PNG, JPEG or WebP image or a caption file"))
            continue
        if str(relative).lower() in seen:
            raise DatasetError(f"contains {info.filename!r} twice", where=str(zip_path),
                               fix="Re-create the archive so each file appears once.")
        seen.add(str(relative).lower())
        plan.append((info, relative))
    if not report.images:
        raise DatasetError("contains no PNG, JPEG or WebP images", where=str(zip_path),
                           fix="Zip the folder that holds the images and their .txt captions.")
    return _drop_top_folder(plan, report)


def _drop_top_folder(plan: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                     report: ImportReport) -> tuple[list[tuple[zipfile.ZipInfo, PurePosixPath]], ImportReport]:
    """A zip of a folder (`cats/01.png`, `cats/01.txt`, ...) holds the dataset itself: drop that one top folder,
    so it is not nested in the dataset. A kohya repeat folder (`10_cats/`) stays: its name sets the repeats."""
    tops = {relative.parts[0] for _, relative in plan if len(relative.parts) > 1}
    top = next(iter(tops), "")
    if len(tops) != 1 or any(len(relative.parts) == 1 for _, relative in plan) or _REPEAT_FOLDER.match(top):
        return plan, report
    strip = len(top) + 1
    report.images = [name[strip:] for name in report.images]
    report.captions = [name[strip:] for name in report.captions]
    return [(info, PurePosixPath(*relative.parts[1:])) for info, relative in plan], report


def _long_caption(name: str, size: int, zip_path: Path) -> DatasetError:
    return DatasetError(f"has a caption {name!r} of {size:,} bytes; captions are at most {MAX_CAPTION_CHARS:,} "
                        "characters", where=str(zip_path), fix="Shorten that caption (or remove it) and zip again.")


def _safe_relative(info: zipfile.ZipInfo, zip_path: Path) -> PurePosixPath:
    """The entry's path inside the dataset, or DatasetError refusing the whole archive."""
    name = info.filename
    refuse = None
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        refuse = "is a symbolic link"
    elif "\x00" in name:
        refuse = "has a NUL character in its name"
    elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        refuse = "is an absolute path"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        refuse = "climbs out of the folder with '..'"
    elif info.flag_bits & 0x1:
        refuse = "is encrypted"
    if refuse:
        raise DatasetError(f"was refused: the entry {name!r} {refuse}", where=str(zip_path),
                           fix="Re-create the archive from the dataset folder itself (a plain zip of files).")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _extract(archive: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, PurePosixPath]], staging: Path,
             zip_path: Path, max_total_bytes: int) -> None:
    """Copy each planned entry, counting real bytes: sizes the directory under-states still meet the cap."""
    written = 0
    for info, relative in plan:
        out = staging.joinpath(*relative.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        caption = relative.suffix.lower() in CAPTION_FILES
        try:
            with archive.open(info) as source, open(out, "wb") as sink:
                this = 0
                while block := source.read(1 << 20):
                    written, this = written + len(block), this + len(block)
                    if written > max_total_bytes:
                        raise DatasetError(f"unpacks to more than the limit of {max_total_bytes:,} bytes",
                                           where=str(zip_path), fix="Upload a smaller dataset.")
                    if caption and this > MAX_CAPTION_BYTES:
                        raise _long_caption(info.filename, this, zip_path)
                    sink.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DatasetError(f"is damaged at {info.filename!r} ({err})", where=str(zip_path),
                               fix="Re-create the archive and upload it again.") from err
        except OSError as err:
            raise disk_error(err, out) from err
