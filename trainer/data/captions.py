"""Caption operations applied each step: trigger word, tag shuffle, caption dropout. Pure functions.

    rng = random.Random(seed)
    text = build_caption("red cat, sitting, sky", config.data, rng)

Each takes its random generator as an argument, so the loop's seed decides every caption and a resumed
run makes the same ones. The text encoder's output can be cached only when captions never change
between steps (`captions_are_static`).
"""

from __future__ import annotations

import random
import re


def has_trigger(caption: str, trigger: str) -> bool:
    """True when `trigger` appears in `caption` as a whole word (case-insensitive)."""
    if not trigger.strip():
        return True
    pattern = r"(?<!\w)" + re.escape(trigger.strip()) + r"(?!\w)"
    return re.search(pattern, caption, flags=re.IGNORECASE) is not None


def add_trigger(caption: str, trigger: str) -> str:
    """Prepend `trigger` as the first tag unless the caption already contains it."""
    trigger = trigger.strip()
    if not trigger or has_trigger(caption, trigger):
        return caption
    return f"{trigger}, {caption}" if caption.strip() else trigger


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empty ones dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def shuffle_tags(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """Shuffle the comma-separated tags after the first `keep_tokens`, which stay in place."""
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


def drop_caption(caption: str, probability: float, rng: random.Random) -> str:
    """The empty caption with `probability`, else the caption (teaches the unconditional case)."""
    if probability <= 0:
        return caption
    return "" if rng.random() < probability else caption


def build_caption(caption: str, data_config, rng: random.Random) -> str:
    """The caption of this step: trigger word first (`keep_tokens=1` keeps it there), shuffle, dropout."""
    text = add_trigger(caption, data_config.trigger_word)
    if data_config.shuffle_tags:
        text = shuffle_tags(text, data_config.keep_tokens, rng)
    return drop_caption(text, data_config.caption_dropout, rng)


def captions_are_static(data_config) -> bool:
    """True when every step sees the same caption for an image, so text embeddings can be cached."""
    return not data_config.shuffle_tags and data_config.caption_dropout <= 0


def caption_mode(data_config) -> str:
    """One line for the run log that says whether the text-encoder cache is used, and why."""
    if captions_are_static(data_config):
        return "Captions are static: text embeddings are computed once and cached."
    reasons = [name for name, on in (("data.shuffle_tags", data_config.shuffle_tags),
                                     ("data.caption_dropout", data_config.caption_dropout > 0)) if on]
    return f"Captions change every step ({' and '.join(reasons)}): the text encoder runs each step, uncached."
