"""Aspect-ratio bucketing: group images into sizes of about resolution² pixels, batch within one size.

    buckets = assign_buckets(items, resolution=512)             # {(w, h): [items]}
    sampler = BucketBatchSampler(buckets, batch_size=4, seed=42)
    for epoch, index, batch in sampler.batches_from(epoch=0, index=0): ...

Bucket sides are multiples of `step` (64: the VAE downsamples 8x and the UNet 8x more), from half to
twice the resolution. The order of batches is a pure function of (seed, epoch), so a run repeats bit
for bit and a resumed run continues where it stopped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
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


class BucketBatchSampler:
    """Batches drawn from one bucket at a time, in an order fixed by (seed, epoch).

    Each item appears `item.repeats` times per epoch (kohya repeat folders). A bucket's last batch may
    be smaller than `batch_size` unless `drop_last` is set.
    """

    def __init__(self, buckets: dict[Bucket, list], batch_size: int, seed: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.buckets = dict(sorted(buckets.items()))
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        """Batches per epoch (the same for every epoch)."""
        total = 0
        for members in self.buckets.values():
            samples = sum(getattr(item, "repeats", 1) for item in members)
            total += samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)
        return total

    def epoch(self, epoch: int) -> list[tuple[Bucket, list]]:
        """Every (bucket, batch) of `epoch`, in training order."""
        rng = random.Random(f"lora-studio:{self.seed}:{epoch}")
        batches: list[tuple[Bucket, list]] = []
        for bucket, members in self.buckets.items():
            pool = [item for item in members for _ in range(getattr(item, "repeats", 1))]
            rng.shuffle(pool)
            for start in range(0, len(pool), self.batch_size):
                batch = pool[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append((bucket, batch))
        rng.shuffle(batches)
        return batches

    def batches_from(self, epoch: int = 0, index: int = 0) -> Iterator[tuple[int, int, tuple[Bucket, list]]]:
        """(epoch, index in epoch, (bucket, batch)) forever, starting at a saved position."""
        if len(self) == 0:
            raise ValueError("no batches: every bucket is smaller than batch_size and drop_last is set")
        while True:
            batches = self.epoch(epoch)
            for position in range(index, len(batches)):
                yield epoch, position, batches[position]
            epoch, index = epoch + 1, 0
