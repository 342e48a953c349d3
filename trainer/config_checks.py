"""Validation of a TrainConfig: each field's range, and the settings that cannot work together.

    validate(config)          # raises one ConfigError listing every bad field with the fix

Split out of `trainer/config.py`, which holds the settings tree and its TOML form; `trainer.config.validate`
calls this module, so callers keep importing it from there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainer.config import CONFIG_VERSION, NETWORK_TYPES, TrainConfig
from trainer.errors import ConfigError


def validate(config: TrainConfig) -> TrainConfig:
    """Check every value; raise one ConfigError listing each bad field with the fix."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    c = config
    need(c.version == CONFIG_VERSION, f"version must be {CONFIG_VERSION}, got {c.version}")
    problems += check_numbers_are_finite(c) + check_seeds(c) + check_names(c)
    need(bool(c.model.base_model.strip()), "model.base_model must not be empty (try 'tiny')")
    need(c.model.prediction_type in ("auto", "epsilon", "v_prediction"),
         f"model.prediction_type must be auto, epsilon or v_prediction, got {c.model.prediction_type!r}")
    need(bool(c.data.path.strip()), "data.path must name the dataset folder")
    need(c.data.caption_extension.startswith("."),
         f"data.caption_extension must start with a dot (like '.txt'), got {c.data.caption_extension!r}")
    need(c.data.resolution == 0 or (64 <= c.data.resolution <= 4096 and c.data.resolution % 8 == 0),
         f"data.resolution must be 0 (the model's own) or a multiple of 8 from 64 to 4096, "
         f"got {c.data.resolution}")
    need(0 <= c.data.caption_dropout <= 1, f"data.caption_dropout must be in 0..1, got {c.data.caption_dropout}")
    need(c.data.keep_tokens >= 0, f"data.keep_tokens must be >= 0, got {c.data.keep_tokens}")
    need(_is_colour(c.data.background),
         f"data.background must be a colour like '#ffffff' or 'white', got {c.data.background!r}")
    need(c.network.type in NETWORK_TYPES,
         f"network.type must be one of {', '.join(NETWORK_TYPES)}, got {c.network.type!r}")
    for flag in ("use_dora", "use_rslora"):
        need(not getattr(c.network, flag) or c.network.type == "lora",
             f"network.{flag} works with network.type = 'lora' only, got {c.network.type!r}: turn it off or "
             "train a LoRA")
    need(c.network.type != "adalora" or c.train.steps >= 2,
         f"network.type = 'adalora' needs train.steps >= 2 for its rank budget schedule, got {c.train.steps}")
    need(1 <= c.network.rank <= 1024, f"network.rank must be 1..1024, got {c.network.rank}")
    need(c.network.alpha > 0, f"network.alpha must be > 0 (often equal to rank), got {c.network.alpha}")
    need(0 <= c.network.dropout < 1, f"network.dropout must be in 0..1, got {c.network.dropout}")
    need(bool(c.network.target_modules), "network.target_modules must name at least one module")
    need(c.optim.learning_rate > 0, f"optim.learning_rate must be > 0, got {c.optim.learning_rate}")
    need(c.optim.text_encoder_lr >= 0, f"optim.text_encoder_lr must be >= 0, got {c.optim.text_encoder_lr}")
    need(c.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {c.optim.weight_decay}")
    need(0 <= c.optim.beta1 < 1 and 0 <= c.optim.beta2 < 1, "optim.beta1 and optim.beta2 must be in 0..1")
    need(c.optim.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0, got {c.optim.max_grad_norm}")
    need(c.optim.lr_scheduler in ("constant", "linear", "cosine"),
         f"optim.lr_scheduler must be constant, linear or cosine, got {c.optim.lr_scheduler!r}")
    need(c.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {c.optim.warmup_steps}")
    need(c.train.steps >= 1, f"train.steps must be >= 1, got {c.train.steps}")
    need(c.train.batch_size >= 1, f"train.batch_size must be >= 1, got {c.train.batch_size}")
    need(c.train.gradient_accumulation_steps >= 1,
         f"train.gradient_accumulation_steps must be >= 1, got {c.train.gradient_accumulation_steps}")
    need(c.train.mixed_precision in ("auto", "no", "fp16", "bf16"),
         f"train.mixed_precision must be auto, no, fp16 or bf16, got {c.train.mixed_precision!r}")
    need(c.train.min_snr_gamma >= 0, f"train.min_snr_gamma must be >= 0 (0 is off), got {c.train.min_snr_gamma}")
    need(c.train.noise_offset >= 0, f"train.noise_offset must be >= 0, got {c.train.noise_offset}")
    need(c.train.save_every >= 0, f"train.save_every must be >= 0 (0: only on stop), got {c.train.save_every}")
    need(c.train.keep_last >= 1, f"train.keep_last must be >= 1, got {c.train.keep_last}")
    need(c.train.num_processes >= 1, f"train.num_processes must be >= 1, got {c.train.num_processes}")
    need(all(part.strip().isdigit() for part in c.train.gpus.split(",")) if c.train.gpus.strip() else True,
         f"train.gpus must be GPU ids separated by commas (like \"0,1\"), got {c.train.gpus!r}")
    need(c.train.num_threads >= 0, f"train.num_threads must be >= 0 (0: every core), got {c.train.num_threads}")
    need(c.train.log_with in ("auto", "tensorboard", "wandb", "none"),
         f"train.log_with must be auto, tensorboard, wandb or none, got {c.train.log_with!r}")
    need(c.sample.every_n_steps >= 0, f"sample.every_n_steps must be >= 0, got {c.sample.every_n_steps}")
    need(1 <= c.sample.steps <= 200, f"sample.steps must be 1..200, got {c.sample.steps}")
    need(bool(c.export.output_dir.strip()), "export.output_dir must name a folder")
    need(c.export.dtype in ("float16", "bfloat16", "float32"),
         f"export.dtype must be float16, bfloat16 or float32, got {c.export.dtype!r}")
    problems += combination_problems(c)
    if problems:
        raise ConfigError(problems)
    return config


def combination_problems(c: TrainConfig) -> list[str]:
    """Settings that are each valid but cannot work together; each message names both fields.

    Checks that need the model (does `network.target_modules` name a layer?) run in `trainer.network.add_lora`,
    after the model is read and before anything is on the GPU. Min-SNR with zero terminal SNR is not here:
    the loop weights SNR-0 timesteps as diffusers' scripts do (see `trainer.loop.min_snr_weight`).
    """
    problems = validation_problems(c)
    if c.data.keep_tokens and not c.data.shuffle_tags:
        problems.append(f"data.keep_tokens = {c.data.keep_tokens} only keeps tags in place while "
                        "data.shuffle_tags shuffles the rest, and data.shuffle_tags is off: turn "
                        "data.shuffle_tags on, or set data.keep_tokens = 0")
    return problems


def validation_problems(c: TrainConfig) -> list[str]:
    """The validation settings alone and together (the image counts are checked once the dataset is read)."""
    data, train = c.data, c.train
    problems = []
    if not 0 <= data.validation_fraction <= 0.5:
        problems.append(f"data.validation_fraction must be in 0..0.5 (0: none held out), got "
                        f"{data.validation_fraction}")
    if data.validation_fraction and data.validation_dir.strip():
        problems.append("data.validation_fraction and data.validation_dir both name a validation set: set "
                        "data.validation_fraction = 0 to use the folder, or data.validation_dir = '' to hold out "
                        "a fraction")
    if train.validate_every < 0:
        problems.append(f"train.validate_every must be >= 0 (0: off), got {train.validate_every}")
    if not 1 <= train.validation_timesteps <= 1000:
        problems.append(f"train.validation_timesteps must be 1..1000, got {train.validation_timesteps}")
    if train.early_stop_patience < 0:
        problems.append(f"train.early_stop_patience must be >= 0 (0: off), got {train.early_stop_patience}")
    has_set = data.validation_fraction > 0 or bool(data.validation_dir.strip())
    if train.validate_every > 0 and not has_set:
        problems.append(f"train.validate_every = {train.validate_every} needs a validation set: set "
                        "data.validation_fraction (like 0.1) or data.validation_dir, or train.validate_every = 0")
    if has_set and train.validate_every == 0:
        problems.append("data.validation_fraction or data.validation_dir holds images out of training, but "
                        "train.validate_every is 0 so they are never scored: set train.validate_every (like 50)")
    if train.early_stop_patience > 0 and train.validate_every <= 0:
        problems.append(f"train.early_stop_patience = {train.early_stop_patience} needs the validation loss: "
                        "set train.validate_every > 0 (with a validation set), or train.early_stop_patience = 0")
    return problems


MAX_SEED = 2**32 - 1
"""Seeds are 0..2^32-1: what numpy, Python's random and every CUDA generator accept alike."""


def check_numbers_are_finite(config: Any, prefix: str = "") -> list[str]:
    """Every float in the tree must be a finite number: TOML's `nan` and `inf` pass every `> 0` check."""
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            problems += check_numbers_are_finite(value, f"{prefix}{f.name}.")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list)
                                                                         else [value])):
            problems.append(f"{prefix}{f.name} must be a finite number, got {value}")
    return problems


def check_seeds(config: TrainConfig) -> list[str]:
    """train.seed and sample.seed fit the 0..2^32-1 every random generator takes."""
    return [f"{where} must be a whole number from 0 to {MAX_SEED:,} (2^32-1), got {value}"
            for where, value in (("train.seed", config.train.seed), ("sample.seed", config.sample.seed))
            if not 0 <= value <= MAX_SEED]


def check_names(config: TrainConfig) -> list[str]:
    """export.name becomes file names: the one rule of `trainer.names`, the same the web UI applies."""
    from trainer.names import check_name

    problem = check_name(config.export.name, "export.name")
    return [problem] if problem else []


def _is_colour(value: str) -> bool:
    from PIL import ImageColor

    try:
        ImageColor.getrgb(value)
    except ValueError:
        return False
    return True
