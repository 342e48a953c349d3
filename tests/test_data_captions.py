"""Caption operations: trigger word, tag shuffle with keep_tokens, dropout, and when text can be cached."""

from __future__ import annotations

import random

import numpy as np

from trainer.config import DataConfig
from trainer.data.captions import (
    add_trigger,
    build_caption,
    caption_mode,
    captions_are_static,
    drop_caption,
    has_trigger,
    shuffle_tags,
)


def test_trigger_is_prepended_only_when_absent():
    assert add_trigger("a red cat", "sks") == "sks, a red cat"
    assert add_trigger("photo of SKS cat", "sks") == "photo of SKS cat"
    assert add_trigger("asks a question", "sks") == "sks, asks a question", "a whole word, not a substring"
    assert add_trigger("", "sks") == "sks" and add_trigger("cat", "") == "cat"
    assert has_trigger("ohwx man, smiling", "ohwx man")


def test_shuffle_keeps_the_first_tags_and_every_tag():
    caption = "sks, red, blue, green, circle, star"
    rng = random.Random(0)
    results = {shuffle_tags(caption, 1, rng) for _ in range(20)}
    assert len(results) > 1
    for text in results:
        tags = text.split(", ")
        assert tags[0] == "sks" and sorted(tags) == sorted(caption.split(", "))
    assert shuffle_tags(caption, 1, random.Random(5)) == shuffle_tags(caption, 1, random.Random(5))
    assert shuffle_tags(caption, 10, random.Random(1)) == caption


def test_dropout_rate_and_seeding():
    rng = random.Random(0)
    dropped = sum(drop_caption("cat", 0.25, rng) == "" for _ in range(4000))
    assert 850 < dropped < 1150
    assert drop_caption("cat", 0.0, rng) == "cat"


def test_build_caption_with_numpy_generator_and_static_check():
    data = DataConfig(trigger_word="sks", shuffle_tags=True, keep_tokens=1)
    a = [build_caption("red, blue, star", data, np.random.default_rng(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0].startswith("sks, ")
    assert not captions_are_static(data) and "data.shuffle_tags" in caption_mode(data)
    assert captions_are_static(DataConfig()) and "cached" in caption_mode(DataConfig())
    assert not captions_are_static(DataConfig(caption_dropout=0.1))
