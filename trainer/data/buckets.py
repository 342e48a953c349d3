"""Aspect-ratio bucketing: group images into sizes of about resolution² pixels, batch within one size.

    buckets = assign_buckets(items, resolution=512)             # {(w, h): [items]}
    batches_per_epoch(buckets, batch_size=4, num_processes=2)   # micro-steps per epoch, as the loop runs them

Bucket sides are multiples of `step` (64: the VAE downsamples 8x and the UNet 8x more), from half to
twice the resolution. The batch order itself is the loop's `ExampleSet.epoch_batches` (trainer/examples.py):
a pure function of (seed, epoch), so a run repeats bit for bit and a resumed run continues where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from trainer.data.images import image_size

Bucket = tuple[int, int]


def make_buckets(resolution: int, step: int = 64) -> list[Bucket]:
    """Each (width, height): sides multiples of `step` in [res/2, 2*res], area at most res²."""
    area = resolution * resolution
    low = max(step, (resolution // 2) // step * step)
    high = max(low, (resolution * 2) // step * step)
    buckets = {(resolution // step * step or step,) * 2}
    for width in range(low, high + 1, step):
        height = min(high, (area // width) // step * step)
        if height >= low:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to width/height (ties: the larger, then the first)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - ratio), 9), -b[0] * b[1], b))


def assign_buckets(items: Sequence, resolution: int, step: int = 64, enabled: bool = True,
                   size_of: Callable[[Path], tuple[int, int]] | None = None) -> dict[Bucket, list]:
    """Put each item in its nearest bucket; with `enabled=False` every item goes to one square bucket.

    `size_of(path)` gives an image's (width, height) after EXIF rotation; by default it reads the file header.
    """
    if not enabled:
        return {(resolution, resolution): list(items)} if items else {}
    size_of = size_of or image_size
    buckets = make_buckets(resolution, step)
    grouped: dict[Bucket, list] = {}
    for item in items:
        width, height = size_of(item.image_path)
        grouped.setdefault(nearest_bucket(width, height, buckets), []).append(item)
    return dict(sorted(grouped.items()))


def bucket_histogram(buckets: dict[Bucket, list]) -> dict[str, int]:
    """{'512x384': images} in bucket order, for reports."""
    return {f"{w}x{h}": len(members) for (w, h), members in buckets.items()}


def batches_per_epoch(buckets: dict[Bucket, list], batch_size: int, num_processes: int = 1) -> int:
    """Micro-steps in one epoch of the loop's order (`ExampleSet.epoch_batches` and the loop's `_batches_at`).

    Each item counts `item.repeats` times. Every micro-step takes one global batch of `batch_size` x
    `num_processes` samples from one bucket; a bucket's last, smaller batch still trains when it gives every
    process at least one sample, and is skipped otherwise (every process must run each step).
    """
    per_step = batch_size * num_processes
    total = 0
    for members in buckets.values():
        full, rest = divmod(sum(getattr(item, "repeats", 1) for item in members), per_step)
        total += full + (rest >= num_processes)
    return total
