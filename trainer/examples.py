"""Training examples: dataset items turned into latents and text conditioning, cached when they cannot change.

    examples = ExampleSet(base, items, config.data, resolution, device)
    batches = examples.epoch_batches(epoch, batch_size, seed)   # pure function of (epoch, seed): resumable
    batch = examples.batch(batches[0], rng)           # TrainBatch: latents, text, sizes (+ loss weights)

The VAE's latent distribution (mean and std) is cached per image, and a fresh latent is drawn from it every
step with the global RNG, so caching changes neither the training signal nor the ability to resume exactly.
Images are sized to their aspect-ratio bucket (`data.bucketing`); with `data.cache_dir` set, latents and text
embeddings are also kept on disk, keyed by content (trainer/data/cache.py), and reused by later runs.
An image's loss mask (trainer/data/masks.py) is resized, cropped and flipped with it and kept at latent size.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import DataConfig
from trainer.data import DatasetItem, add_trigger, assign_buckets, build_caption, prepare_image
from trainer.data.cache import file_sha256, latent_key, module_identity, open_cache, text_key
from trainer.data.masks import batch_mask, crop_mask, flip_mask, open_with_mask, to_latent_grid
from trainer.data.packed_store import PackedStore
from trainer.models.families import ImageSizes

TEXT_BATCH = 32
"""Captions per text-encoder batch when caching: one pass per caption is slow, all at once is a GPU-sized
batch of 1,000 on a large dataset."""


@dataclass
class Example:
    item: DatasetItem
    caption: str
    size: tuple[int, int]
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    flipped_mean: torch.Tensor | None = None
    flipped_std: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    """The loss mask: (H, W) pixel weights until encoded, then (1, h, w) at latent size; None: 1 everywhere."""


@dataclass
class TrainBatch:
    """One (micro-)batch as the UNet step consumes it.

    `weight` (one value per example) and `mask` (one per latent pixel, shaped like `latents` but with one
    channel) scale the per-element loss; None means 1 everywhere.
    """
    latents: torch.Tensor
    text: dict[str, torch.Tensor]
    sizes: ImageSizes
    weight: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def captions_are_static(data: DataConfig) -> bool:
    """Captions that never change between steps can have their text-encoder outputs cached."""
    return not data.shuffle_tags and data.caption_dropout == 0


class ExampleSet:
    def __init__(self, base, items: list[DatasetItem], data: DataConfig, resolution: int,
                 device: torch.device, dtype: torch.dtype, cache_text: bool):
        self.base = base
        self.data = data
        self.device = device
        self.dtype = dtype
        buckets = assign_buckets(items, resolution, enabled=data.bucketing)
        size_of = {id(item): size for size, members in buckets.items() for item in members}
        flips = 2 if data.flip else 1
        self.latent_store = PackedStore({size: len(members) * flips for size, members in buckets.items()})
        # One image's pixels at a time (opened, encoded, dropped): 1,000 images at 1024 px would be 12 GB of
        # float32 pixels held at once; their latent distributions (mean and std) are 1/24 of that.
        self.examples = [self._encode_latents(self._load(item, size_of[id(item)])) for item in items]
        self.index = [i for i, ex in enumerate(self.examples) for _ in range(ex.item.repeats)]
        self.text_cache: dict[str, dict[str, torch.Tensor]] | None = None
        if cache_text:
            self.text_cache = self._encode_captions(sorted({ex.caption for ex in self.examples}))

    def __len__(self) -> int:
        return len(self.index)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """Shuffled batches of one image size each; the order depends only on (seed, epoch)."""
        order = torch.randperm(len(self.index), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        by_size: dict[tuple[int, int], list[int]] = {}
        for position in order.tolist():
            example_id = self.index[position]
            by_size.setdefault(self.examples[example_id].size, []).append(example_id)
        batches = [ids[i:i + batch_size] for ids in by_size.values() for i in range(0, len(ids), batch_size)]
        shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 7 + epoch))
        return [batches[i] for i in shuffle.tolist()]

    def batch(self, ids: list[int], rng: np.random.Generator, text_fn=None,
              generators: list[torch.Generator] | None = None) -> TrainBatch:
        """Latents drawn from the cached distributions, the text conditioning, and the image geometry.

        `generators` (one per example) draw the latents; without them the global RNG does.
        """
        chosen = [self._oriented(self.examples[i], rng) for i in ids]
        mean = torch.stack([ex.latent_mean for ex in chosen]).to(self.device)
        std = torch.stack([ex.latent_std for ex in chosen]).to(self.device)
        if generators is None:
            draw = torch.randn(mean.shape, device=self.device, dtype=mean.dtype)
        else:
            draw = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
        latents = mean + std * draw.to(self.device, mean.dtype)
        captions = [self._caption_for_step(ex.caption, rng) for ex in chosen]
        if text_fn is not None:
            text = text_fn(captions)
        elif self.text_cache is not None:
            text = {k: torch.cat([self.text_cache[c][k] for c in captions]) for k in self.text_cache[captions[0]]}
        else:
            text = self.base.family.encode_text(self.base.pipe, captions)
        sizes = ImageSizes([ex.original_size for ex in chosen], [ex.crop_top_left for ex in chosen],
                           chosen[0].size[::-1])
        return TrainBatch(latents, text, sizes, mask=batch_mask([ex.mask for ex in chosen], mean.shape, self.device))

    def _oriented(self, example: Example, rng: np.random.Generator) -> Example:
        """The example as trained this step: mirrored half of the time when `data.flip` is on."""
        if self.data.flip and rng.random() < 0.5:
            return dataclasses.replace(example, latent_mean=example.flipped_mean, latent_std=example.flipped_std,
                                       mask=flip_mask(example.mask))
        return example

    def _load(self, item: DatasetItem, size: tuple[int, int]) -> Example:
        image, mask = open_with_mask(item, self.data)
        # Latents are encoded once, so a random crop is drawn once per image, seeded by its path.
        crop_rng = random.Random(str(item.image_path)) if self.data.random_crop else None
        pixels, crop = prepare_image(image, size[0], size[1], random_crop=self.data.random_crop, rng=crop_rng)
        caption = add_trigger(item.caption, self.data.trigger_word)
        return Example(item, caption, size, (image.height, image.width), crop, pixels=pixels,
                       mask=crop_mask(mask, size[0], size[1], crop))

    @functools.cached_property
    def _latent_cache(self):
        """The on-disk latent cache and the VAE's identity in its keys (None, "" without `data.cache_dir`)."""
        if not self.data.cache_dir:
            return None, ""
        return open_cache(self.data.cache_dir, "latents"), module_identity(self.base.pipe.vae)

    @torch.no_grad()
    def _encode_latents(self, example: Example) -> Example:
        """Fill in the example's latent distributions (and its mirror's) and let go of its pixels."""
        vae = self.base.pipe.vae
        cache, vae_id = self._latent_cache
        digest = file_sha256(example.item.image_path) if cache is not None else ""
        for flip in (False, True) if self.data.flip else (False,):
            pixels = example.pixels.flip(-1) if flip else example.pixels
            encode = functools.partial(self._encode_pixels, vae, pixels)
            key = latent_key(digest, example.size, example.crop_top_left, flip, vae_id, self.data.background)
            stats = cache.get_or_build(key, encode)[0] if cache is not None else encode()
            kept = self.latent_store.keep(example.size, {"mean": stats["mean"].to(self.device),
                                                         "std": stats["std"].to(self.device)})
            mean, std = kept["mean"], kept["std"]
            if flip:
                example.flipped_mean, example.flipped_std = mean, std
            else:
                example.latent_mean, example.latent_std = mean, std
        example.pixels = None
        example.mask = to_latent_grid(example.mask, example.latent_mean.shape[-2:], self.device)
        return example

    def _encode_pixels(self, vae, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        dist = vae.encode(pixels.unsqueeze(0).to(self.device, vae.dtype)).latent_dist
        scale = vae.config.scaling_factor
        return {"mean": dist.mean[0].float() * scale, "std": dist.std[0].float() * scale}

    def _encode_captions(self, captions: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        pipe, family = self.base.pipe, self.base.family
        if not self.data.cache_dir:
            return self._encode_in_batches(captions)
        cache = open_cache(self.data.cache_dir, "text")
        encoder_id = module_identity(*(getattr(pipe, n) for n in family.text_encoder_names), pipe.tokenizer,
                                     getattr(pipe, "tokenizer_2", None))
        keys = {c: text_key(c, encoder_id) for c in captions}
        store = PackedStore({"text": len(captions)})
        found = {}
        for c in captions:
            entry = cache.get(keys[c])
            if entry is not None:
                found[c] = self._packed_row(store, {k: v.to(self.device) for k, v in entry.items()})
        missing = [c for c in captions if c not in found]
        for c, encoded in self._encode_in_batches(missing, store).items():
            found[c] = encoded
            cache.put(keys[c], encoded)
        return {c: found[c] for c in captions}

    def _encode_in_batches(self, captions: list[str], store: PackedStore | None = None
                           ) -> dict[str, dict[str, torch.Tensor]]:
        """Each caption's text-encoder outputs (batch of one), encoded `TEXT_BATCH` captions at a time and
        packed into `store` (a new one for just these captions by default)."""
        store = store or PackedStore({"text": len(captions)})
        out = {}
        for start in range(0, len(captions), TEXT_BATCH):
            chunk = captions[start:start + TEXT_BATCH]
            encoded = self.base.family.encode_text(self.base.pipe, chunk)
            out.update({c: self._packed_row(store, {k: v[i:i + 1] for k, v in encoded.items()})
                        for i, c in enumerate(chunk)})
        return out

    @staticmethod
    def _packed_row(store: PackedStore, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch-of-one caption entry copied into the caption block: the same shapes, as views."""
        return {k: v.unsqueeze(0) for k, v in store.keep("text", {k: v[0] for k, v in row.items()}).items()}

    def _caption_for_step(self, caption: str, rng: np.random.Generator) -> str:
        """Tag shuffle and caption dropout of `data` (the trigger word is already in `caption`)."""
        return build_caption(caption, self.data, rng)
