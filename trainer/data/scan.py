"""Find the images of a dataset folder and their captions (`.txt` beside each image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import DataConfig
from trainer.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class DatasetItem:
    image_path: Path
    caption: str
    repeats: int = 1
    concept: str = ""


def scan_dataset(data: DataConfig) -> list[DatasetItem]:
    root = Path(data.path)
    if not root.is_dir():
        raise DatasetError("does not exist or is not a folder", where=f"data.path {root}",
                           fix="Point data.path (--data) at a folder of images with .txt captions.")
    items = []
    for image_path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        caption_path = image_path.with_suffix(data.caption_extension)
        caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else ""
        items.append(DatasetItem(image_path, caption or data.default_caption or data.trigger_word))
    if not items:
        raise DatasetError("holds no PNG, JPEG or WebP images", where=f"data.path {root}",
                           fix="Add images (with a .txt caption beside each) or point --data elsewhere.")
    return items
