"""Caption a dataset's images with a captioner or tagger and write the `.txt` beside each image.

    captioner = load_captioner("Salesforce/blip-image-captioning-base")   # trainer/data/captioners.py
    report = caption_dataset("datasets/cats", captioner, mode="missing", prefix="sks")
    print(report.format())

Modes: `missing` fills only images without a caption (the default: nothing a person wrote is lost),
`overwrite` replaces every caption, `append` adds the new text after the existing caption. `prefix` (a
trigger word) is put first in each written caption unless it is already there. Images are opened with the
dataset's own safe reader; one that cannot be read is skipped and named in the report, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.captions import add_trigger
from trainer.errors import DatasetError, StudioError
from trainer.fileio import atomic_write_bytes

MODES = ("missing", "overwrite", "append")
CAPTION_EXT = ".txt"


@dataclass
class CaptionReport:
    """What `caption_dataset` did: captions written, images left as they were, images it could not read."""

    folder: Path
    written: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        n = len(self.written)
        lines = [f"Captioned {n} image{'s' * (n != 1)} in {self.folder.name}"
                 + (f"; kept the existing caption of {len(self.kept)}" if self.kept else "") + "."]
        lines += [f"Could not read {name}: {reason}." for name, reason in self.failed]
        return "\n".join(lines)


def merge_caption(old: str, new: str, mode: str, prefix: str = "") -> str:
    """The caption to write for an image whose caption is `old` and whose model caption is `new`."""
    old, new = " ".join(old.split()), " ".join(new.split())
    text = f"{old}, {new}" if mode == "append" and old and new else (new or old)
    return add_trigger(text, prefix)


def dataset_images(folder: Path) -> list[Path]:
    """Every PNG, JPEG and WebP image of the dataset (sub-folders too), in order."""
    from trainer.data.scan import scan_folder

    return sorted({Path(item.image_path) for item in scan_folder(folder).items})


def caption_dataset(folder: str | Path, captioner: Callable[[list], list[str]], mode: str = "missing",
                    prefix: str = "", batch_size: int = 4,
                    on_progress: Callable[[int, int], None] | None = None) -> CaptionReport:
    """Caption the images of `folder` in batches; `on_progress(done, total)` after each batch."""
    if mode not in MODES:
        raise DatasetError(f"is not a captioning mode (use one of {', '.join(MODES)})", where=repr(mode))
    folder = Path(folder)
    report = CaptionReport(folder)
    todo = []
    for image in dataset_images(folder):
        if mode == "missing" and _read(image).strip():
            report.kept.append(str(image.relative_to(folder)))
        else:
            todo.append(image)
    if on_progress:
        on_progress(0, len(todo))
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start:start + max(1, batch_size)]
        opened = _open(batch, folder, report)
        if opened:
            for image, new in zip(opened, captioner([im for _, im in opened]), strict=True):
                caption = merge_caption(_read(image[0]), new, mode, prefix)
                atomic_write_bytes(image[0].with_suffix(CAPTION_EXT), caption.encode("utf-8"))
                report.written[str(image[0].relative_to(folder))] = caption
        if on_progress:
            on_progress(min(start + len(batch), len(todo)), len(todo))
    return report


def _read(image: Path) -> str:
    try:
        return image.with_suffix(CAPTION_EXT).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _open(batch: list[Path], folder: Path, report: CaptionReport) -> list[tuple[Path, object]]:
    from trainer.data.images import open_image

    opened = []
    for path in batch:
        try:
            opened.append((path, open_image(path)))
        except (StudioError, OSError) as err:
            report.failed.append((str(path.relative_to(folder)), str(err).rstrip(".")))
    return opened
