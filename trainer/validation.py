"""Validation: a held-out image set scored at fixed timesteps with fixed noise, and the best step kept.

    train_items, held_out = split_items(items, config)          # trainer/data/split.py
    validator = Validator.build(base, held_out, config, ...)     # None when train.validate_every is 0
    if validator.due(step):
        stop_early = validator.check(accelerator, unet, step, emit, export_best)

The loss of each validation image is the mean over `train.validation_timesteps` timesteps spread evenly over
the noise schedule, each with noise (and a latent draw) from a generator seeded by (seed, image, timestep):
the same every check, so the curve moves only because the LoRA did. It is plain MSE against the model's
target (no min-SNR weighting, no noise offset), weighted by the image's loss mask as in training
(trainer/data/masks.py), with the LoRA in eval mode (no dropout) and no grad.
Every rank scores its share (images rank, rank + world, …) and the sums are gathered, so all ranks see
the same number and take the same early-stop decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import DatasetItem
from trainer.data.split import split_items

__all__ = ["BestTracker", "Validator", "best_name", "best_paths", "split_items", "validation_timesteps"]


def validation_timesteps(count: int, num_train_timesteps: int) -> list[int]:
    """`count` timesteps evenly spaced over the schedule, at the centres of equal slices."""
    return [int((k + 0.5) * num_train_timesteps / count) for k in range(count)]


@dataclass
class BestTracker:
    """The lowest validation loss so far, its step, and how many checks since it improved."""
    best_step: int = 0
    best_loss: float | None = None
    checks_since_best: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record a check; True when it is a new best."""
        if self.best_loss is None or loss < self.best_loss:
            self.best_step, self.best_loss, self.checks_since_best = step, loss, 0
            return True
        self.checks_since_best += 1
        return False

    def exhausted(self, patience: int) -> bool:
        return patience > 0 and self.checks_since_best >= patience

    def state(self) -> dict:
        return dataclasses.asdict(self)


class Validator:
    """Scores the validation set and tracks the best step; see the module docstring."""

    def __init__(self, examples, config: TrainConfig, noise_scheduler, tracker: BestTracker):
        self.examples = examples
        self.config = config
        self.noise_scheduler = noise_scheduler
        self.tracker = tracker
        self.timesteps = validation_timesteps(config.train.validation_timesteps,
                                              noise_scheduler.config.num_train_timesteps)

    @classmethod
    def build(cls, base, items: list[DatasetItem], config: TrainConfig, resolution: int, device, dtype,
              noise_scheduler, state=None) -> Validator | None:
        """None when validation is off; `state` (a checkpoint's TrainerState) restores the best so far."""
        if config.train.validate_every <= 0 or not items:
            return None
        from trainer.examples import ExampleSet

        # Validation images are scored as they are: no flip, no tag shuffle, no caption dropout, no repeats.
        data = dataclasses.replace(config.data, flip=False, shuffle_tags=False, caption_dropout=0.0)
        items = [dataclasses.replace(item, repeats=1) for item in items]
        examples = ExampleSet(base, items, data, resolution, device, dtype,
                              cache_text=not config.network.train_text_encoder)
        tracker = BestTracker()
        if state is not None:
            tracker = BestTracker(state.best_step, state.best_loss, state.checks_since_best)
        return cls(examples, config, noise_scheduler, tracker)

    def __len__(self) -> int:
        return len(self.examples.examples)

    def due(self, step: int) -> bool:
        every = self.config.train.validate_every
        return step % every == 0 or step == self.config.train.steps

    def check(self, accelerator, unet, step: int, emit, export_best) -> bool:
        """Score the set, emit a Validation event, export a new best (`export_best(step)`, main process);
        True when early stopping says to stop."""
        from trainer import tracking
        from trainer.events import Validation

        loss = self.loss(accelerator, unet)
        if self.tracker.update(step, loss) and accelerator.is_main_process:
            export_best(step, loss)
        emit(Validation(step=step, loss=loss, best_step=self.tracker.best_step,
                        best_loss=self.tracker.best_loss))
        tracking.log_validation(accelerator, step, loss)
        return self.tracker.exhausted(self.config.train.early_stop_patience)

    @torch.no_grad()
    def loss(self, accelerator, unet) -> float:
        """The mean validation loss over every image and fixed timestep, gathered over all ranks."""
        model = accelerator.unwrap_model(unet)
        modules = [model, *(getattr(self.examples.base.pipe, n) for n in self.examples.base.family.text_encoder_names)]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        try:
            for index in range(accelerator.process_index, len(self), accelerator.num_processes):
                total[0] += self._image_loss(model, index)
                total[1] += 1
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
        summed = accelerator.reduce(total, reduction="sum") if accelerator.num_processes > 1 else total
        return float(summed[0] / summed[1])

    def _image_loss(self, model, index: int) -> float:
        """One image's loss: the mean over the fixed timesteps (each its own seeded latent draw and noise)."""
        base, seed = self.examples.base, self.config.train.seed
        count = len(self.timesteps)
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + index * 1_009 + k) for k in range(count)]
        batch = self.examples.batch([index] * count, np.random.default_rng(seed), None, generators)
        latents, text, sizes = batch.latents, batch.text, batch.sizes
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
        noise = noise.to(latents.device, latents.dtype)
        timesteps = torch.tensor(self.timesteps, device=latents.device).long()
        scheduler = self.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        v_prediction = base.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        unet_dtype = next(p.dtype for p in model.parameters() if not p.requires_grad)
        kwargs = base.family.unet_kwargs({k: v.to(unet_dtype) for k, v in text.items()}, sizes)
        prediction = model(noisy.to(unet_dtype), timesteps, **kwargs).sample
        from trainer.loop import per_example_loss  # here: loop imports this module

        squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
        return per_example_loss(squared, batch).mean().item()  # one image, one mask: the mean of the means


def best_name(config: TrainConfig) -> str:
    """The best LoRA's file stem: `<name>.best` (`<name>.best.safetensors`, `<name>.best.peft.safetensors`)."""
    return f"{config.export.name}.best"


def best_paths(config: TrainConfig) -> list[Path]:
    out = Path(config.export.output_dir)
    return [p for p in (out / f"{best_name(config)}.safetensors", out / f"{best_name(config)}.peft.safetensors")
            if p.is_file()]
