"""The optimizer a run steps with (`optim.optimizer`), its learning-rate schedule, and the state it keeps.

    check_available(config, accelerator.device)   # before the model loads: refuses what cannot run here
    optimizer, lr_scheduler = build_optimizer(params, config, world)
    with evaluating(optimizer, when=saving):      # schedule-free: sample, score and save the averaged weights
        ...
    state_bytes("prodigy", [((8, 320), False), ((320, 8), True)])   # for the memory estimate

The settings follow what the anchors (kohya sd-scripts, OneTrainer, ai-toolkit) and the optimizers' own
authors document for LoRA training:
- `adamw`: torch's fused AdamW (one kernel for every LoRA tensor), lr about 1e-4.
- `adamw8bit`: bitsandbytes' blockwise 8-bit AdamW, same settings as `adamw`; CUDA only.
- `prodigy`: prodigyopt's Prodigy estimates the step size itself: lr 1.0 (a multiplier on its estimate;
  `optim.d_coef` scales the estimate instead), decoupled weight decay, `use_bias_correction=True` and
  `safeguard_warmup=True` (the recipe the anchors' users share; safe with or without warmup).
- `schedulefree`: schedulefree's AdamWScheduleFree averages its iterates instead of decaying the lr, so the
  LR schedule is constant and `optim.warmup_steps` is its own warmup; it is stepped in train mode and its
  averaged weights (eval mode) are the ones sampled, validated, saved in checkpoints and exported.
- `adafactor`: transformers' Adafactor at a fixed lr (`relative_step=False, scale_parameter=False,
  warmup_init=False`, no first moment), its second moment factored into a row and a column per matrix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator

import torch

from trainer.config import OPTIMIZERS, TrainConfig
from trainer.errors import ConfigError

PACKAGES = {"adamw8bit": "bitsandbytes", "prodigy": "prodigyopt", "schedulefree": "schedulefree"}
"""The package each optimizer outside torch and transformers comes from (its pip name)."""
CUDA_ONLY = ("adamw8bit",)
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes keeps 32-bit state for tensors with fewer elements (its `min_8bit_size` default)."""
BNB_BLOCK = 256
"""bitsandbytes' 8-bit Adam quantises each state in blocks of this many values, with a float32 scale each."""


def check_available(config: TrainConfig, device: torch.device | str) -> None:
    """Refuse, before any model loads, an optimizer this machine cannot run, saying what to install or pick."""
    name = config.optim.optimizer
    if name in CUDA_ONLY and (torch.device(device).type != "cuda" or not _installed(PACKAGES[name])):
        where = "no CUDA GPU" if torch.device(device).type != "cuda" else "bitsandbytes is not installed"
        raise ConfigError([f"optim.optimizer = '{name}' needs a CUDA GPU and `pip install bitsandbytes` "
                           f"(this run has {where}); choose 'adamw' (or 'adafactor' for less memory) to train "
                           "without one"])
    if name in PACKAGES and not _installed(PACKAGES[name]):
        raise ConfigError([f"optim.optimizer = '{name}' needs `pip install {PACKAGES[name]}`; install it, or "
                           "choose 'adamw'"])


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def param_groups(params: dict[str, list[torch.nn.Parameter]], config: TrainConfig) -> list[dict]:
    """One group per trained component, in `params`' order (the UNet's lr, or the text encoders')."""
    optim = config.optim
    return [{"params": group, "lr": optim.learning_rate if name == "unet"
             else optim.text_encoder_lr or optim.learning_rate} for name, group in params.items()]


def build_optimizer(params: dict[str, list[torch.nn.Parameter]], config: TrainConfig, world: int):
    """The optimizer `optim.optimizer` names over the LoRA groups, and its LR schedule. accelerate steps the
    schedule once per process, hence the factor `world` on its step counts."""
    from diffusers.optimization import get_scheduler

    optim = config.optim
    optimizer = make_optimizer(optim.optimizer, param_groups(params, config), config)
    schedule, warmup = optim.lr_scheduler, optim.warmup_steps
    if optim.optimizer == "schedulefree":
        warmup = 0  # the optimizer warms up itself (`warmup_steps`), and its schedule is constant
    elif schedule == "constant" and warmup:
        schedule = "constant_with_warmup"  # diffusers' `constant` ignores num_warmup_steps
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup * world,
                                 num_training_steps=config.train.steps * world)
    return optimizer, lr_scheduler


def make_optimizer(name: str, groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer itself, with the settings the module docstring gives."""
    optim = config.optim
    betas, decay = (optim.beta1, optim.beta2), optim.weight_decay
    if name == "adamw":
        # fused: one kernel for all LoRA tensors instead of a Python loop over them (CPU and CUDA alike).
        return torch.optim.AdamW(groups, betas=betas, fused=True, weight_decay=decay, eps=optim.eps)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=betas, weight_decay=decay, eps=optim.eps)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, betas=betas, weight_decay=decay, eps=optim.eps, decouple=True,
                       use_bias_correction=True, safeguard_warmup=True, d_coef=optim.d_coef)
    if name == "schedulefree":
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(groups, betas=betas, weight_decay=decay, eps=optim.eps,
                                 warmup_steps=optim.warmup_steps)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=optim.learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=decay)
    raise ConfigError([f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}"])


def has_modes(optimizer) -> bool:
    """Schedule-free optimizers (train/eval modes), also when wrapped by accelerate's AcceleratedOptimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None))


@contextlib.contextmanager
def evaluating(optimizer, when: bool = True) -> Iterator[None]:
    """With a schedule-free optimizer and `when`: the weights are its average (eval mode) inside, and back in
    train mode after. Switching only when something reads the weights keeps the steps bit for bit as they are
    between checkpoints, so a resumed run (which loads eval-mode weights, then switches) repeats the original."""
    switch = when and has_modes(optimizer)
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()


def state_bytes(name: str, tensors: list[tuple[tuple[int, ...], bool]]) -> int:
    """Bytes of optimizer state for trained float32 tensors given as (shape, starts at zero), as each
    optimizer allocates it (checked against the real optimizers in tests/test_optimizers.py)."""
    total = 0
    for shape, zero in tensors:
        n = math.prod(shape)
        if name in ("adamw", "schedulefree"):
            total += 8 * n  # AdamW: two moments; schedule-free: z and the second moment
        elif name == "adamw8bit":
            small = n < BNB_MIN_8BIT_SIZE
            total += 8 * n if small else 2 * n + 2 * 4 * -(-n // BNB_BLOCK)
        elif name == "prodigy":
            # s, both moments, and the starting point p0 (a scalar for a tensor that starts at zero: LoRA's B)
            total += 12 * n + (4 if zero else 4 * n)
        elif name == "adafactor":  # a row and a column of second moments per matrix, and its RMS
            total += 4 + (4 * (math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])) if len(shape) >= 2
                          else 4 * n)
        else:
            raise ConfigError([f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}"])
    return total
