"""Aspect-ratio buckets, and the loop's own seeded, resumable batch order (`ExampleSet.epoch_batches`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_files import write_image

from trainer.config import TrainConfig
from trainer.data.buckets import (
    assign_buckets,
    batches_per_epoch,
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


@pytest.fixture(scope="module")
def example_set(tmp_path_factory):
    """A real ExampleSet (the loop's own) of 10 images in 3 buckets at 128 px, one image repeated 3 times."""
    import torch

    from trainer.config import DataConfig
    from trainer.data import scan_dataset
    from trainer.examples import ExampleSet
    from trainer.models import load_base

    root = tmp_path_factory.mktemp("order")
    sizes = [(128, 128)] * 5 + [(192, 64)] * 3 + [(64, 192)] * 2
    for n, (width, height) in enumerate(sizes):
        write_image(root / ("3_again" if n == 0 else "1_once") / f"{n}.png", width, height, seed=n, caption=f"c{n}")
    data = DataConfig(path=str(root))
    items = scan_dataset(data)
    examples = ExampleSet(load_base(TrainConfig().model), items, data, 128, torch.device("cpu"), torch.float32, False)
    return examples, assign_buckets(items, 128)


def test_the_loops_batches_come_from_one_bucket_in_a_seeded_order(example_set):
    examples, buckets = example_set
    assert len(examples) == 12, "10 images, one of them 3 times"
    epoch0 = examples.epoch_batches(0, 2, seed=42)
    for batch in epoch0:
        assert 1 <= len(batch) <= 2 and len({examples.examples[i].size for i in batch}) == 1, batch
    assert sorted(i for b in epoch0 for i in b) == sorted(examples.index), "every sample once per epoch"
    assert len(epoch0) == batches_per_epoch(buckets, 2) == 4 + 2 + 1, "7, 3 and 2 samples in batches of 2"
    assert examples.epoch_batches(0, 2, seed=42) == epoch0
    assert examples.epoch_batches(1, 2, seed=42) != epoch0 and examples.epoch_batches(0, 2, seed=7) != epoch0


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_loops_order_resumes_and_the_doctor_counts_its_steps(example_set, world, tmp_path):
    from trainer.config import TrainingConfig
    from trainer.data import doctor
    from trainer.loop import _batches_at

    examples, buckets = example_set
    cfg = TrainingConfig(batch_size=2, seed=42, num_processes=world)
    cache: dict = {}
    straight = [_batches_at(examples, m, cfg, world, cache) for m in range(30)]
    per_epoch = cache["per_epoch"]
    assert per_epoch == batches_per_epoch(buckets, 2, world)
    assert [epoch for epoch, _ in straight[:per_epoch + 1]] == [0] * per_epoch + [1]
    for m in (per_epoch - 1, per_epoch, 2 * per_epoch + 1):  # a resumed run starts with an empty cache
        epoch, batches = _batches_at(examples, m, cfg, world, {})
        assert (epoch, batches[m % len(batches)]) == (straight[m][0], straight[m][1][m % per_epoch])
    for _, batches in straight:
        assert all(world <= len(b) <= 2 * world for b in batches), "each process gets at least one example"

    config = TrainConfig()
    config.train = TrainingConfig(batch_size=2, num_processes=world, gradient_accumulation_steps=2, steps=30)
    summary = doctor(examples.examples[0].item.image_path.parents[1], config, tokenizer=None).summary
    assert summary["num_processes"] == world and summary["steps_per_epoch"] == -(-per_epoch // 2)
    assert summary["epochs"] == round(30 * 2 / per_epoch, 2)
