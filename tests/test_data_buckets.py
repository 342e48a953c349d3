"""Aspect-ratio buckets and the seeded, resumable batch order."""

from __future__ import annotations

from pathlib import Path

from trainer.data.buckets import (
    BucketBatchSampler,
    assign_buckets,
    bucket_histogram,
    make_buckets,
    nearest_bucket,
)
from trainer.data.scan import DatasetItem


def test_buckets_keep_the_area_and_sides_the_unet_accepts():
    buckets = make_buckets(512)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets
    for width, height in buckets:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= 512 * 512
        assert 256 <= width <= 1024 and 256 <= height <= 1024


def test_each_image_goes_to_its_nearest_aspect():
    buckets = make_buckets(512)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    wide = nearest_bucket(1600, 900, buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 16 / 9) < 0.2
    tall = nearest_bucket(900, 1600, buckets)
    assert tall == wide[::-1]


def items_with_sizes(sizes):
    items = [DatasetItem(Path(f"{n}.png"), f"c{n}", repeats=2 if n == 0 else 1) for n in range(len(sizes))]
    lookup = {item.image_path: size for item, size in zip(items, sizes, strict=True)}
    return items, lookup.__getitem__


def test_assign_buckets_and_histogram():
    items, size_of = items_with_sizes([(800, 800), (1200, 600), (600, 1200), (810, 790), (1190, 610)])
    buckets = assign_buckets(items, 512, size_of=size_of)
    assert sorted(len(v) for v in buckets.values()) == [1, 2, 2]
    assert sum(bucket_histogram(buckets).values()) == 5
    square = assign_buckets(items, 256, enabled=False)
    assert list(square) == [(256, 256)] and len(square[(256, 256)]) == 5


def test_batches_come_from_one_bucket_in_a_seeded_resumable_order():
    sizes = [(800, 800), (1200, 600), (600, 1200)] * 4
    items, size_of = items_with_sizes(sizes)
    buckets = assign_buckets(items, 512, size_of=size_of)
    sampler = BucketBatchSampler(buckets, batch_size=2, seed=42)
    epoch0 = sampler.epoch(0)
    assert len(epoch0) == len(sampler) == 7, "13 samples (one image repeated twice) in 3 buckets of 5, 4, 4"
    for bucket, batch in epoch0:
        assert all(item in buckets[bucket] for item in batch)
    seen = [item.caption for _, batch in epoch0 for item in batch]
    assert sorted(seen) == sorted(["c0"] + [i.caption for i in items])
    again = BucketBatchSampler(buckets, batch_size=2, seed=42)
    assert again.epoch(0) == epoch0 and again.epoch(1) == sampler.epoch(1)
    assert sampler.epoch(1) != epoch0 and BucketBatchSampler(buckets, 2, seed=7).epoch(0) != epoch0
    stream = sampler.batches_from(0, 0)
    straight = [next(stream) for _ in range(10)]
    resumed = sampler.batches_from(*straight[5][:2])
    assert [next(resumed) for _ in range(5)] == straight[5:], "resuming at (epoch, index) continues"
    assert straight[7][0] == 1 and straight[7][1] == 0
    assert len(BucketBatchSampler(buckets, 2, 42, drop_last=True)) == 6
