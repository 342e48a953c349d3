"""The validation split: which images are held out of training (`data.validation_fraction`) or read from
`data.validation_dir` instead; trainer/validation.py scores them.

    train_items, held_out = split_items(items, config)
"""

from __future__ import annotations

import random

from trainer.config import TrainConfig
from trainer.data.scan import DatasetItem
from trainer.errors import ConfigError


def split_items(items: list[DatasetItem], config: TrainConfig) -> tuple[list[DatasetItem], list[DatasetItem]]:
    """(training items, validation items): a seeded fraction held out, or the `data.validation_dir` folder."""
    data = config.data
    if data.validation_dir.strip():
        return items, _folder_items(config)
    if not data.validation_fraction:
        return items, []
    held = max(1, round(len(items) * data.validation_fraction))  # a fraction > 0 holds out at least one
    if held >= len(items):
        raise ConfigError([f"data.validation_fraction = {data.validation_fraction} of {len(items)} image(s) holds "
                           f"out {held} and leaves none to train on: add images, or set "
                           "data.validation_fraction = 0 and train.validate_every = 0"])
    ordered = sorted(items, key=lambda item: str(item.image_path))
    random.Random(config.train.seed).shuffle(ordered)
    held_out = {str(item.image_path) for item in ordered[:held]}
    return ([item for item in items if str(item.image_path) not in held_out],
            [item for item in items if str(item.image_path) in held_out])


def _folder_items(config: TrainConfig) -> list[DatasetItem]:
    """The validation folder's items, checked by the same dataset doctor as the training set."""
    from trainer.data.doctor import DatasetRefused, doctor

    report = doctor(config.data.validation_dir, config)
    if not report.ok:
        raise DatasetRefused(report)
    return report.items
