"""Datasets: find images and captions in the layouts users have, open them safely, make training tensors.

    items = scan_dataset(config.data)        # list[DatasetItem]
    image = open_image(items[0].image_path)  # RGB PIL image, or a DatasetError naming the file
"""

from trainer.data.images import open_image, prepare_image
from trainer.data.scan import DatasetItem, scan_dataset

__all__ = ["DatasetItem", "open_image", "prepare_image", "scan_dataset"]
