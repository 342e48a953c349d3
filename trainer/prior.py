"""Prior preservation: class (regularization) images trained beside the training images at `train.prior_loss_weight`.

    class_items = class_items_for_run(config, base, resolution, accelerator, workdir, report, emit)
    examples = example_set(base, items, class_items, config, resolution, device, dtype, cache_text)

The class images are a folder (`data.class_dir`) or are drawn once from the base model (`data.class_prompt` x
`data.num_class_images`) into a cache folder and reused (trainer/data/prior.py says where and when). As in kohya's
sd-scripts they are examples in the same epoch stream, matched in count to the training samples, bucketed and
batched with them; each class example's loss is weighted by `train.prior_loss_weight` through `TrainBatch.weight`.
The epoch order stays a pure function of (seed, epoch), so a resumed run trains exactly like an unbroken one.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import torch

from trainer.data import DatasetItem, build_caption
from trainer.data.doctor import DatasetRefused, doctor
from trainer.data.prior import (
    GUIDANCE,
    MANIFEST,
    class_config,
    class_folder,
    class_order,
    enabled,
    generated,
    generation_settings,
    read_manifest,
)
from trainer.events import ClassImages
from trainer.examples import ExampleSet, TrainBatch
from trainer.fileio import atomic_write_bytes


class PriorExampleSet(ExampleSet):
    """The training examples (ids 0..n-1) followed by the class examples; each epoch holds every training sample
    and as many class samples (`class_order`), shuffled together into size-bucketed batches."""

    def __init__(self, base, items: list[DatasetItem], class_items: list[DatasetItem], data, resolution: int,
                 device, dtype, cache_text: bool, prior_loss_weight: float, seed: int):
        self._class_ids = {id(item) for item in class_items}  # read by _load during the base class's __init__
        # A class caption describes the class, so no trigger word: not at load, nor in each step's caption (a
        # training caption has its trigger word by then, so it can equal a class caption only when that has it).
        self._class_captions = {item.caption for item in class_items}
        self._class_data = dataclasses.replace(data, trigger_word="")
        super().__init__(base, items + class_items, data, resolution, device, dtype, cache_text)
        count = len(items)
        train_index = [i for i in self.index if i < count]
        self.index = train_index + [count + k for k in class_order(class_items, len(train_index), seed)]
        self.num_train_samples = len(train_index)
        self.weights = [1.0] * count + [float(prior_loss_weight)] * len(class_items)

    def batch(self, ids: list[int], rng: np.random.Generator, text_fn=None,
              generators: list[torch.Generator] | None = None) -> TrainBatch:
        """The base batch with each class example's loss weight (training examples weigh 1)."""
        out = super().batch(ids, rng, text_fn, generators)
        weight = torch.tensor([self.weights[i] for i in ids], dtype=torch.float32, device=out.latents.device)
        if out.weight is not None:
            weight = weight * out.weight.to(weight.device, weight.dtype)
        return dataclasses.replace(out, weight=weight)

    def _load(self, item, size):
        example = super()._load(item, size)
        if id(item) in self._class_ids:
            example.caption = item.caption
        return example

    def _caption_for_step(self, caption: str, rng: np.random.Generator) -> str:
        if caption in self._class_captions:
            return build_caption(caption, self._class_data, rng)
        return super()._caption_for_step(caption, rng)


def example_set(base, items, class_items, config, resolution, device, dtype, cache_text) -> ExampleSet:
    """A plain ExampleSet without class images, a PriorExampleSet with them."""
    if not class_items:
        return ExampleSet(base, items, config.data, resolution, device, dtype, cache_text)
    return PriorExampleSet(base, items, class_items, config.data, resolution, device, dtype, cache_text,
                           config.train.prior_loss_weight, config.train.seed)


def class_items_for_run(config, base, resolution: int, accelerator, workdir, report, emit) -> list[DatasetItem]:
    """The class items this run trains on ([] when off): the checked folder's, or generated ones (drawn by the main
    process when the cache does not hold them yet, then checked like a folder)."""
    if not enabled(config):
        return []
    folder = class_folder(config, workdir, resolution)
    made = 0
    if generated(config):
        if accelerator.is_main_process:
            made = ensure_generated(base, config, folder, resolution)
        accelerator.wait_for_everyone()
        checked = doctor(folder, class_config(config))
        if not checked.ok:
            raise DatasetRefused(checked)
        items = checked.items
    else:
        items = report.class_images.items  # checked before the model loaded (check_dataset)
    train_samples = report.summary.get("samples_per_epoch", 0)
    emit(ClassImages(folder=str(folder), images=len(items), generated=made, samples_per_epoch=train_samples))
    return items


def ensure_generated(base, config, folder, resolution: int) -> int:
    """Draw the class images into `folder` unless a complete manifest for this very model is there; returns how
    many were drawn (0: reused). The model's identity covers its weights, dtype and quantization."""
    from trainer.data.cache import module_identity

    pipe = base.pipe
    identity = module_identity(pipe.unet, pipe.vae, *(getattr(pipe, n) for n in base.family.text_encoder_names))
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("model") == identity:
        return 0
    (folder / MANIFEST).unlink(missing_ok=True)  # from here the folder is incomplete until the manifest is back
    files = _draw(base, config, folder, resolution)
    settings = {**generation_settings(config, resolution), "model": identity, "files": files}
    atomic_write_bytes(folder / MANIFEST, json.dumps(settings, indent=1).encode())
    return _image_count(files)


@torch.no_grad()
def _draw(base, config, folder, resolution: int) -> list[str]:
    """Render `data.num_class_images` images (image i seeded `class_seed + i`) with the LoRA layers off, each
    with its prompt as caption; the global RNG is left as it was, so the run trains the same as with a cache hit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from trainer.generate.render import render, save_png

    data = config.data
    pipe = _decoding_pipe(base)
    layers = [m for name in ("unet", *base.family.text_encoder_names)
              for m in getattr(base.pipe, name).modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    files = []
    try:
        with torch.random.fork_rng(devices=[]):
            for index in range(data.num_class_images):
                image = render(pipe, data.class_prompt, seed=data.class_seed + index, steps=data.class_steps,
                               guidance=GUIDANCE, width=resolution, height=resolution)[0]
                name = f"{index:05d}"
                save_png(image, folder / f"{name}.png")
                atomic_write_bytes(folder / f"{name}.txt", data.class_prompt.encode("utf-8"))
                files += [f"{name}.png", f"{name}.txt"]
    finally:
        for layer in layers:
            layer.enable_adapters(True)
    return files


def _image_count(files: list[str]) -> int:
    return sum(name.endswith(".png") for name in files)


def _decoding_pipe(base):
    """The pipeline to draw with: the base one, or (when the VAE encodes in float32 for an fp16 UNet, as SDXL's does)
    one sharing its parts with a copy of the VAE in the UNet's dtype, as the samples decode; the encoding VAE is
    left untouched so the latents are the same as with a cache hit."""
    pipe = base.pipe
    unet_dtype = next(pipe.unet.parameters()).dtype
    if pipe.vae.dtype == unet_dtype or not unet_dtype.is_floating_point:
        return pipe
    # Not `from_pipe`: it casts every shared component (the training UNet too) to its torch_dtype, float32.
    return type(pipe)(**{**pipe.components, "vae": copy.deepcopy(pipe.vae).to(dtype=unet_dtype)})
