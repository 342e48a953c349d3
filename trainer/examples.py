"""Training examples: dataset items turned into latents and text conditioning, cached when they cannot change.

    examples = ExampleSet(base, items, config.data, resolution, device)
    batches = examples.epoch_batches(epoch, batch_size, seed)   # pure function of (epoch, seed): resumable
    latents, text, sizes = examples.batch(batches[0], rng)

The VAE's latent distribution (mean and std) is cached per image, and a fresh latent is drawn from it every
step with the global RNG, so caching changes neither the training signal nor the ability to resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import DataConfig
from trainer.data import DatasetItem, open_image, prepare_image
from trainer.models.families import ImageSizes


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
        self.examples = [self._load(item, resolution) for item in items]
        self.index = [i for i, ex in enumerate(self.examples) for _ in range(ex.item.repeats)]
        self.text_cache: dict[str, dict[str, torch.Tensor]] | None = None
        self._encode_latents()
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

    def batch(self, ids: list[int], rng: np.random.Generator,
              text_fn=None) -> tuple[torch.Tensor, dict[str, torch.Tensor], ImageSizes]:
        """Latents drawn from the cached distributions, the text conditioning, and the image geometry."""
        chosen = [self.examples[i] for i in ids]
        mean = torch.stack([ex.latent_mean for ex in chosen]).to(self.device)
        std = torch.stack([ex.latent_std for ex in chosen]).to(self.device)
        latents = mean + std * torch.randn(mean.shape, device=self.device, dtype=mean.dtype)
        captions = [self._caption_for_step(ex.caption, rng) for ex in chosen]
        if text_fn is not None:
            text = text_fn(captions)
        elif self.text_cache is not None:
            text = {k: torch.cat([self.text_cache[c][k] for c in captions]) for k in self.text_cache[captions[0]]}
        else:
            text = self.base.family.encode_text(self.base.pipe, captions)
        sizes = ImageSizes([ex.original_size for ex in chosen], [ex.crop_top_left for ex in chosen],
                           chosen[0].size[::-1])
        return latents, text, sizes

    def _load(self, item: DatasetItem, resolution: int) -> Example:
        image = open_image(item.image_path, background=self.data.background)
        pixels, crop = prepare_image(image, resolution, resolution, random_crop=False)
        caption = item.caption
        trigger = self.data.trigger_word.strip()
        if trigger and trigger not in caption:
            caption = f"{trigger}, {caption}" if caption else trigger
        return Example(item, caption, (resolution, resolution), (image.height, image.width), crop, pixels=pixels)

    @torch.no_grad()
    def _encode_latents(self) -> None:
        vae = self.base.pipe.vae
        for example in self.examples:
            pixels = example.pixels.unsqueeze(0).to(self.device, vae.dtype)
            dist = vae.encode(pixels).latent_dist
            example.latent_mean = dist.mean[0].float() * vae.config.scaling_factor
            example.latent_std = dist.std[0].float() * vae.config.scaling_factor
            example.pixels = None

    def _encode_captions(self, captions: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        encoded = self.base.family.encode_text(self.base.pipe, captions)
        return {c: {k: v[i:i + 1] for k, v in encoded.items()} for i, c in enumerate(captions)}

    def _caption_for_step(self, caption: str, rng: np.random.Generator) -> str:
        if self.data.caption_dropout and rng.random() < self.data.caption_dropout:
            return ""
        if self.data.shuffle_tags:
            tags = [t.strip() for t in caption.split(",")]
            keep, rest = tags[: self.data.keep_tokens], tags[self.data.keep_tokens:]
            rng.shuffle(rest)
            caption = ", ".join(keep + rest)
        return caption
