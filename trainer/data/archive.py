"""Import an uploaded `.zip` dataset into `<home>/datasets/<name>/` without trusting anything in it.

    report = import_archive("upload.zip", home / "datasets", "cats")
    print(report.format())     # what was imported and what was skipped, and why

The whole archive is refused if any entry could write outside the target (`..`, an absolute path, a
drive letter) or is a symlink, or if the entry count or total uncompressed size is over its cap; all
of that is checked from the zip's directory before one byte is written. Files that are neither images
nor captions are skipped and listed. Extraction goes to a hidden temporary folder beside the target
and is renamed into place only when complete, so a failure leaves nothing half written.
"""

from __future__ import annotations

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

MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 4 * 1024**3
CAPTION_FILES = (".txt", ".caption")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
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
    if not _NAME.match(name):
        raise DatasetError(f"is not a usable dataset name: {name!r}", where=str(zip_path),
                           fix="Use up to 100 letters, digits, '.', '-' or '_', first a letter or digit.")
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
        plan, report = _plan(archive, zip_path, max_entries, max_total_bytes)
        report.dataset_dir = target
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=dest_root))
        try:
            _extract(archive, plan, staging, zip_path, max_total_bytes)
            _place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return report


def _place(staging: Path, target: Path) -> None:
    """Rename the finished folder into place, or move its files into an existing one (never overwriting)."""
    if not target.exists():
        os.rename(staging, target)
        return
    files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    clashes = [str(rel) for rel in files if (target / rel).exists()]
    if clashes:
        shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise DatasetError(f"already has {shown}", where=str(target),
                           fix="Rename those files in the archive, or delete them from the dataset first.")
    for rel in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / rel, target / rel)
    shutil.rmtree(staging, ignore_errors=True)


def _plan(archive: zipfile.ZipFile, zip_path: Path, max_entries: int,
          max_total_bytes: int) -> tuple[list[tuple[zipfile.ZipInfo, PurePosixPath]], ImportReport]:
    """Check every entry from the directory alone; return the (entry, relative path) pairs to write."""
    entries = archive.infolist()
    if len(entries) > max_entries:
        raise DatasetError(f"has {len(entries):,} entries, more than the limit of {max_entries:,}",
                           where=str(zip_path), fix="Split the dataset into smaller archives.")
    total = sum(info.file_size for info in entries)
    if total > max_total_bytes:
        raise DatasetError(f"would unpack to {total:,} bytes, more than the limit of {max_total_bytes:,}",
                           where=str(zip_path), fix="Upload a smaller dataset (or downscale the images).")
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
    return plan, report


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
        try:
            with archive.open(info) as source, open(out, "wb") as sink:
                while block := source.read(1 << 20):
                    written += len(block)
                    if written > max_total_bytes:
                        raise DatasetError(f"unpacks to more than the limit of {max_total_bytes:,} bytes",
                                           where=str(zip_path), fix="Upload a smaller dataset.")
                    sink.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DatasetError(f"is damaged at {info.filename!r} ({err})", where=str(zip_path),
                               fix="Re-create the archive and upload it again.") from err
        except OSError as err:
            raise disk_error(err, out) from err
