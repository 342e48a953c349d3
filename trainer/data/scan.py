"""Find the images and captions of a dataset in the layouts people already have.

    items = scan_dataset(config.data)        # list[DatasetItem]; DatasetError if missing or empty
    found = scan_folder(Path("datasets/cats"), caption_extension=".txt")   # plus what was left out

Layouts, which may be mixed and nested:
- images with a caption file beside them (`01.png` + `01.txt`; the extension is configurable);
- kohya repeat folders: `<root>/10_mystyle/...` counts each image 10 times, concept `mystyle`;
- diffusers imagefolder: a `metadata.jsonl` with `file_name` and `text` on each line;
- any depth of sub-folders. Hidden files and folders (starting with '.') are skipped.
Loss masks (`01.mask.png` beside `01.png`, trainer/data/masks.py) are paired with their images, never
trained as images themselves.
An image without a caption gets `data.default_caption` (or the trigger word) and is reported.
Originals are only read, never written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.images import IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS
from trainer.data.masks import is_mask_file, pair_masks
from trainer.errors import DatasetError
from trainer.names import MAX_CAPTION_BYTES, MAX_CAPTION_CHARS

METADATA_FILE = "metadata.jsonl"
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
_JSONL_FIX = 'Write one object a line: {"file_name": "01.png", "text": "..."}'
_LONG_FIX = f"Shorten the caption to at most {MAX_CAPTION_CHARS:,} characters (CLIP reads only the first 77 tokens)."
_LAYOUTS_HELP = (
    "Put PNG, JPEG or WebP images in it with a .txt caption beside each (01.png + 01.txt), "
    "or use kohya folders like 10_mystyle/, or a metadata.jsonl with file_name and text."
)


@dataclass
class DatasetItem:
    """One training image: its file, caption, how often it counts per epoch, and its concept."""

    image_path: Path
    caption: str
    repeats: int = 1
    concept: str = ""
    caption_source: str = "file"
    """Where the caption came from: `file` (beside it), `metadata` (metadata.jsonl) or `default` (none)."""
    caption_path: Path | None = None
    mask_path: Path | None = None
    """Its loss mask (`<stem>.mask.png` beside it), if there is one."""


@dataclass
class Problem:
    """Something the scan could not use, for the doctor to report (scan_dataset raises the first one)."""

    path: Path
    message: str
    fix: str


@dataclass
class ScanResult:
    root: Path
    items: list[DatasetItem] = field(default_factory=list)
    unsupported: list[Path] = field(default_factory=list)
    """Files with an image extension we refuse (GIF, BMP, TIFF, HEIC...)."""
    orphan_captions: list[Path] = field(default_factory=list)
    """Caption files with no image beside them."""
    orphan_masks: list[Path] = field(default_factory=list)
    """Mask files (`*.mask.png`) with no image beside them."""
    ignored: list[Path] = field(default_factory=list)
    """Every other file."""
    problems: list[Problem] = field(default_factory=list)


def scan_dataset(data_config, root: str | Path | None = None) -> list[DatasetItem]:
    """The items of the dataset at `root` (default `data_config.path`); DatasetError if missing or empty."""
    found = scan_folder(Path(root if root is not None else data_config.path),
                        caption_extension=data_config.caption_extension,
                        default_caption=data_config.default_caption or data_config.trigger_word)
    if found.problems:
        first = found.problems[0]
        raise DatasetError(first.message, where=str(first.path), fix=first.fix)
    return found.items


def scan_folder(root: Path, caption_extension: str = ".txt", default_caption: str = "") -> ScanResult:
    """Walk `root` and sort every file into items, unsupported images, orphan captions and ignored files."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("does not exist", where=str(root),
                           fix=f"Check data.path (relative paths start at {Path.cwd()}).")
    if not root.is_dir():
        raise DatasetError("is not a folder", where=str(root), fix="Point data.path at the dataset folder.")
    result = ScanResult(root=root)
    files = _walk(root)
    metadata = _read_metadata(root, files, result)
    ext = caption_extension.lower()
    used_captions: set[Path] = set()
    masks = [path for path in files if is_mask_file(path)]
    for path in files:
        suffix = path.suffix.lower()
        if is_mask_file(path):
            continue
        if suffix in IMAGE_EXTENSIONS:
            item = _make_item(root, path, ext, metadata, default_caption, result)
            if item.caption_path:
                used_captions.add(item.caption_path)
            result.items.append(item)
        elif suffix in OTHER_IMAGE_EXTENSIONS:
            result.unsupported.append(path)
    result.orphan_masks = pair_masks(result.items, masks)
    for path in files:
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS or suffix in OTHER_IMAGE_EXTENSIONS or path.name == METADATA_FILE:
            continue
        if suffix == ext and path not in used_captions:
            result.orphan_captions.append(path)
        elif suffix != ext:
            result.ignored.append(path)
    if not result.items:
        extra = (f" ({len(result.unsupported)} unsupported: {_names(result.unsupported)})"
                 if result.unsupported else "")
        raise DatasetError(f"has no PNG, JPEG or WebP images{extra}", where=str(root), fix=_LAYOUTS_HELP)
    return result


def _walk(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _make_item(root: Path, path: Path, ext: str, metadata: dict[Path, str], default_caption: str,
               result: ScanResult) -> DatasetItem:
    repeats, concept = repeats_and_concept(root, path)
    item = DatasetItem(image_path=path, caption=default_caption, repeats=repeats, concept=concept,
                       caption_source="default")
    sidecar = _sidecar(path, ext)
    if sidecar is not None:
        item.caption_path = sidecar
        item.caption_source = "file"
        try:
            item.caption = _read_caption(sidecar, default_caption, result)
        except (UnicodeDecodeError, OSError) as err:
            item.caption = default_caption
            result.problems.append(Problem(sidecar, f"cannot be read as UTF-8 text ({err})",
                                           "Save the caption as UTF-8 text."))
    elif path.resolve() in metadata:
        item.caption = metadata[path.resolve()]
        item.caption_source = "metadata"
    return item


def _read_caption(path: Path, default_caption: str, result: ScanResult) -> str:
    """The caption in `path`; one over MAX_CAPTION_CHARS is a problem, and a file too big to be one is not read."""
    size = path.stat().st_size
    if size > MAX_CAPTION_BYTES:
        result.problems.append(Problem(path, f"is {size:,} bytes, too long for a caption (at most "
                                             f"{MAX_CAPTION_CHARS:,} characters)", _LONG_FIX))
        return default_caption
    text = clean_caption(path.read_text(encoding="utf-8-sig"))
    if len(text) > MAX_CAPTION_CHARS:
        result.problems.append(Problem(path, f"is {len(text):,} characters, more than the caption limit of "
                                             f"{MAX_CAPTION_CHARS:,}", _LONG_FIX))
    return text


def _sidecar(image: Path, ext: str) -> Path | None:
    for candidate in (image.with_suffix(ext), image.with_suffix(ext.upper()), Path(f"{image}{ext}")):
        if candidate.is_file():
            return candidate
    return None


def repeats_and_concept(root: Path, image: Path) -> tuple[int, str]:
    """kohya's `N_name` folder nearest the image gives (N, name); otherwise (1, the top folder's name)."""
    parts = image.relative_to(root).parts[:-1]
    for part in reversed(parts):
        match = _REPEAT_FOLDER.match(part)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)), match.group(2)
    return 1, parts[0] if parts else root.name


def clean_caption(text: str) -> str:
    """One caption line: whitespace (newlines included) collapsed to single spaces."""
    return " ".join(text.split())


def _read_metadata(root: Path, files: list[Path], result: ScanResult) -> dict[Path, str]:
    """Captions from every `metadata.jsonl`, keyed by the resolved image path it names."""
    captions: dict[Path, str] = {}
    for meta in (p for p in files if p.name == METADATA_FILE):
        try:
            lines = meta.read_text(encoding="utf-8-sig").splitlines()
        except (UnicodeDecodeError, OSError) as err:
            result.problems.append(Problem(meta, f"cannot be read as UTF-8 text ({err})",
                                           "Save it as UTF-8, one JSON object a line."))
            continue
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = Path(f"{meta}:{number}")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                result.problems.append(Problem(where, f"is not valid JSON ({err.msg})", _JSONL_FIX))
                continue
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                result.problems.append(Problem(where, "has no file_name string", _JSONL_FIX))
                continue
            text = clean_caption(str(row.get("text", row.get("caption", "")) or ""))
            if len(text) > MAX_CAPTION_CHARS:
                result.problems.append(Problem(where, f"has a caption of {len(text):,} characters, more than the "
                                                      f"limit of {MAX_CAPTION_CHARS:,}", _LONG_FIX))
            captions[(meta.parent / row["file_name"]).resolve()] = text
    return captions


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
