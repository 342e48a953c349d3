"""Validation of a TrainConfig: each field's range, and the settings that cannot work together.

    validate(config)          # raises one ConfigError listing every bad field with the fix

Split out of `trainer/config.py`, which holds the settings tree and its TOML form; `trainer.config.validate`
calls this module, so callers keep importing it from there.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from trainer.config import CONFIG_VERSION, NETWORK_TYPES, OPTIMIZERS, QUANTIZE_CHOICES, TrainConfig
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
    need(c.model.quantize in QUANTIZE_CHOICES,
         f"model.quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {c.model.quantize!r}")
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
    need(c.model.quantize == "none" or c.network.type in ("lora", "adalora"),
         f"model.quantize = {c.model.quantize!r} works with network.type = 'lora' or 'adalora' (peft has no "
         f"4-bit {c.network.type} layer), got {c.network.type!r}: set model.quantize = 'none' or network.type = 'lora'")
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
    problems += optimizer_problems(c)
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
    problems += ema_problems(c)
    problems += prior_problems(c)
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


def ema_problems(c: TrainConfig) -> list[str]:
    """The EMA settings (trainer/ema.py)."""
    train = c.train
    if not 0 <= train.ema_decay < 1:
        return [f"train.ema_decay must be in 0..1, below 1 (0: off; 0.999 is typical), got {train.ema_decay}"]
    if train.ema_on_cpu and not train.ema_decay:
        return ["train.ema_on_cpu places the EMA copy, but train.ema_decay is 0 (EMA off): set train.ema_decay "
                "(like 0.999), or train.ema_on_cpu = false"]
    return []


PRODIGY_LR = (0.1, 10.0)
"""Prodigy multiplies its own step-size estimate by the learning rate: 1 is the value its authors and the
anchors' recipes use; outside this range the estimate is overridden (scale it with optim.d_coef instead)."""


def optimizer_problems(c: TrainConfig) -> list[str]:
    """`optim.optimizer` and the settings it needs. Whether this machine can run it (adamw8bit needs CUDA and
    bitsandbytes) is checked at the start of a run, where the device is known: `trainer.optimizers`."""
    optim = c.optim
    if optim.optimizer not in OPTIMIZERS:
        return [f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optim.optimizer!r}"]
    problems = []
    if optim.d_coef <= 0:
        problems.append(f"optim.d_coef must be > 0 (1 is Prodigy's own estimate), got {optim.d_coef}")
    low, high = PRODIGY_LR
    if optim.optimizer == "prodigy":
        if not low <= optim.learning_rate <= high:
            problems.append(f"optim.learning_rate = {optim.learning_rate} with optim.optimizer = 'prodigy': "
                            "Prodigy sets its own step size and multiplies it by the learning rate; set "
                            "optim.learning_rate = 1 (and scale the step with optim.d_coef, like 2 or 0.5)")
        if optim.text_encoder_lr not in (0.0, optim.learning_rate):
            problems.append(f"optim.text_encoder_lr = {optim.text_encoder_lr} with optim.optimizer = 'prodigy': "
                            "Prodigy takes one learning rate for every group; set optim.text_encoder_lr = 0 "
                            "(the same as optim.learning_rate), or use optim.optimizer = 'adamw'")
    if optim.optimizer == "schedulefree" and optim.lr_scheduler != "constant":
        problems.append(f"optim.lr_scheduler = '{optim.lr_scheduler}' with optim.optimizer = 'schedulefree': "
                        "schedule-free AdamW replaces the schedule by averaging its weights; set "
                        "optim.lr_scheduler = 'constant' (optim.warmup_steps still warms it up)")
    if optim.optimizer == "schedulefree" and c.train.ema_decay:
        problems.append(f"train.ema_decay = {c.train.ema_decay} with optim.optimizer = 'schedulefree': schedule-free "
                        "AdamW already averages its weights (and samples and exports the average); set "
                        "train.ema_decay = 0, or use optim.optimizer = 'adamw' with EMA")
    return problems


def prior_problems(c: TrainConfig) -> list[str]:
    """The prior-preservation settings: a class folder or generated class images, never both (trainer/prior.py)."""
    data, weight = c.data, c.train.prior_loss_weight
    problems = []
    if weight < 0:
        problems.append(f"train.prior_loss_weight must be >= 0 (1.0 is kohya's and diffusers' value), got {weight}")
    if not 0 <= data.num_class_images <= 10_000:
        problems.append(f"data.num_class_images must be 0..10000 (0: generate none), got {data.num_class_images}")
    if not 1 <= data.class_steps <= 200:
        problems.append(f"data.class_steps must be 1..200, got {data.class_steps}")
    if not 0 <= data.class_seed <= MAX_SEED:
        problems.append(f"data.class_seed must be a whole number from 0 to {MAX_SEED:,} (2^32-1), "
                        f"got {data.class_seed}")
    folder, prompt = data.class_dir.strip(), data.class_prompt.strip()
    if data.num_class_images > 0 and folder:
        problems.append("data.num_class_images asks for generated class images, but data.class_dir names a class "
                        "folder: set data.num_class_images = 0 to use the folder, or data.class_dir = '' to generate")
    elif data.num_class_images > 0 and not prompt:
        problems.append(f"data.num_class_images = {data.num_class_images} needs data.class_prompt (like "
                        "\"a photo of a dog\") to generate them from, or set data.num_class_images = 0")
    elif prompt and not folder and data.num_class_images == 0:
        problems.append("data.class_prompt is set but no class images are used: set data.num_class_images (like "
                        "100) to generate them, or data.class_dir to a folder of class images")
    if folder and Path(folder).expanduser().resolve() == Path(data.path).expanduser().resolve():
        problems.append("data.class_dir is the training folder data.path: class (regularization) images must be "
                        "a folder of their own")
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
