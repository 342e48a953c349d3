"""Datasets: find images and captions, open them safely, check, bucket and caption them, cache, import.

    items, report = check_dataset(config)            # the doctor; DatasetRefused on errors
    buckets = assign_buckets(items, resolution)      # {(w, h): [DatasetItem]}
    batches_per_epoch(buckets, config.train.batch_size, num_processes=2)   # the loop's micro-steps per epoch

Modules: `scan` (layouts), `images` (safe opening, tensors), `doctor` (+ `report_text`, `similar`),
`buckets`, `captions`, `cache` (content-keyed disk caches), `archive` (safe zip import).
"""

from trainer.data.archive import ImportReport, import_archive
from trainer.data.buckets import (
    assign_buckets,
    batches_per_epoch,
    bucket_histogram,
    make_buckets,
    nearest_bucket,
)
from trainer.data.captions import (
    add_trigger,
    build_caption,
    caption_mode,
    captions_are_static,
    drop_caption,
    shuffle_tags,
)
from trainer.data.doctor import DatasetRefused, Finding, Report, check_dataset, default_resolution, doctor
from trainer.data.images import image_size, open_image, prepare_image, read_image
from trainer.data.scan import DatasetItem, scan_dataset, scan_folder

# The caches need torch; they load on first use so `lora-studio doctor` starts without it.
_CACHE_NAMES = ("DiskCache", "MemoryCache", "file_sha256", "latent_key", "module_identity", "open_cache",
                "text_key")


def __getattr__(name: str):
    if name in _CACHE_NAMES:
        from trainer.data import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")


__all__ = [
    "DatasetItem", "DatasetRefused", "DiskCache", "Finding", "ImportReport",
    "MemoryCache", "Report", "add_trigger", "assign_buckets", "batches_per_epoch", "bucket_histogram", "build_caption",
    "caption_mode",
    "captions_are_static", "check_dataset", "default_resolution", "doctor", "drop_caption", "file_sha256",
    "image_size", "import_archive", "latent_key", "make_buckets", "module_identity", "nearest_bucket",
    "open_cache", "open_image", "prepare_image", "read_image", "scan_dataset", "scan_folder", "shuffle_tags",
    "text_key",
]
