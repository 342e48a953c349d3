"""Start's dataset check: the trainer's dataset doctor runs before a job is queued, and its refusal reads as a
Markdown list in the Train tab (each problem once, with its fix once per check).

    check_before_start(config)        # raises DatasetNotReady(report_markdown) when the doctor refuses
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from trainer.config import TrainConfig
from trainer.errors import StudioError

LIMIT = 10
"""At most this many files listed per check; the rest are counted."""


class DatasetNotReady(StudioError):
    """The dataset is missing or the doctor refused it; `.markdown` is what the Train tab shows."""

    def __init__(self, markdown: str, what: str):
        self.markdown = markdown
        super().__init__(what, fix="Fix the problems listed, then press Start again.")


def report_markdown(report, dataset: str) -> str:
    """The doctor's errors (the class images' too) as Markdown: one item a check, its files, its fix once."""
    lines = [f"**Could not start:** the dataset doctor refused **{dataset}** (nothing was queued):", ""]
    for title, part in (("", report), ("class images: ", report.class_images)):
        if part is None:
            continue
        errors = sorted(part.errors, key=lambda f: f.code)
        for code, group in groupby(errors, key=lambda f: f.code):
            group = list(group)
            fixes = list(dict.fromkeys(f.fix for f in group if f.fix))
            if len(group) == 1:
                lines.append(f"- **{title}{code}**: `{_name(group[0].path)}` {group[0].message}")
            else:
                lines.append(f"- **{title}{code}** ({len(group)} files)")
                lines += [f"  - `{_name(f.path)}` {f.message}" for f in group[:LIMIT]]
            if len(group) > LIMIT:
                lines.append(f"  - … and {len(group) - LIMIT} more")
            for fix in fixes:
                lines.append(f"  - *Fix:* {fix}")
    lines += ["", "Run the doctor in the Datasets tab for the whole report, or tick "
              "*Skip images the dataset doctor refuses* (Advanced) to drop bad images."]
    return "\n".join(lines)


def _name(path: str) -> str:
    return Path(path).name or path


def check_before_start(config: TrainConfig, dataset: str) -> None:
    """Refuse a dataset folder that does not exist or that the doctor refuses, before anything is queued."""
    from trainer.data import doctor
    from trainer.data.doctor import with_class_images

    folder = Path(config.data.path)
    if not folder.is_dir():
        text = f"dataset {dataset!r} does not exist"
        fix = "Pick a dataset from the list, or make one in the Datasets tab."
        raise DatasetNotReady(f"**Could not start:** {text}. {fix}", text)
    report = with_class_images(doctor(None, config), config)
    if not report.ok:
        raise DatasetNotReady(report_markdown(report, dataset), f"the dataset doctor refused {dataset!r}")
