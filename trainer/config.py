"""The one typed settings tree for a training run, its TOML form, and its validation.

    config = load_config("run.toml", overrides={"train.steps": 200})
    save_config(config, "output/config.toml")

Every field has a default and a docstring under it. Unknown keys and bad values are errors that name
the dotted field and the fix; they are raised before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from trainer.errors import ConfigError

CONFIG_VERSION = 1
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class ModelConfig:
    base_model: str = "tiny"
    """`tiny`, `tiny-sd2`, `tiny-sdxl`, a hub id, a local diffusers folder or a single-file `.safetensors`."""
    base_config: str = ""
    """For a single-file checkpoint: a diffusers folder (or hub id) with its configs and tokenizer."""
    prediction_type: str = "auto"
    """`auto` (from the scheduler config), `epsilon` or `v_prediction`."""
    zero_terminal_snr: bool = False
    """Rescale the noise schedule to zero terminal SNR (recommended with v-prediction)."""
    allow_pickle: bool = False
    """Allow `.ckpt`/`.bin`/`.pt` base models (loaded with `weights_only=True`). Off: safetensors only."""


@dataclass
class DataConfig:
    path: str = "datasets/example"
    """Folder of images with `.txt` captions, kohya `N_name` repeat folders, or a `metadata.jsonl`."""
    caption_extension: str = ".txt"
    """Extension of the caption file beside each image."""
    default_caption: str = ""
    """Caption for images that have none (the trigger word is used when this is empty)."""
    trigger_word: str = ""
    """Prepended to every caption that does not already contain it."""
    resolution: int = 0
    """Training resolution in pixels; 0 uses the base model's own (128 tiny, 512 SD 1.x, 768 SD 2.x, 1024 SDXL)."""
    bucketing: bool = True
    """Group images by aspect ratio into buckets of about resolution² pixels instead of square crops."""
    random_crop: bool = False
    """Crop at a random position instead of the centre."""
    flip: bool = False
    """Randomly flip images horizontally (do not use for asymmetric subjects or text)."""
    shuffle_tags: bool = False
    """Shuffle comma-separated tags in each caption every step (after the first `keep_tokens` tags)."""
    keep_tokens: int = 0
    """Number of leading comma-separated tags kept in place when shuffling."""
    caption_dropout: float = 0.0
    """Probability of training a step with an empty caption (0..1)."""
    background: str = "#ffffff"
    """Colour that transparent pixels are composited on."""
    skip_bad_images: bool = False
    """Drop images the dataset doctor refuses (and list them) instead of refusing the whole run."""
    cache_dir: str = ""
    """Folder for the on-disk latent/text caches; empty keeps caches in memory only."""
    validation_fraction: float = 0.0
    """Fraction (0..0.5) of the dataset's images held out of training as the validation set (at least one
    image), picked with `train.seed`; 0 holds none out. Needs `train.validate_every` > 0."""
    validation_dir: str = ""
    """A folder of images (and captions) used as the validation set instead, read like `data.path`."""


@dataclass
class NetworkConfig:
    rank: int = 8
    """LoRA rank (dimension): the size of the low-rank update. 4–32 is typical."""
    alpha: float = 8.0
    """LoRA alpha: the update is scaled by alpha / rank. Equal to rank gives scale 1."""
    dropout: float = 0.0
    """Dropout on the LoRA path during training (0..1)."""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """UNet modules that get LoRA layers."""
    train_text_encoder: bool = False
    """Also train LoRA layers on the text encoder(s)."""
    use_dora: bool = False
    """peft's DoRA (weight-decomposed LoRA)."""
    use_rslora: bool = False
    """peft's rank-stabilised LoRA: scale alpha / sqrt(rank) instead of alpha / rank."""


@dataclass
class OptimConfig:
    learning_rate: float = 1e-4
    """Peak learning rate of the UNet LoRA."""
    text_encoder_lr: float = 0.0
    """Learning rate of the text-encoder LoRA; 0 uses `learning_rate`."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 turns clipping off."""
    lr_scheduler: str = "constant"
    """`constant`, `linear` or `cosine` (all after warmup)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to the learning rate."""


@dataclass
class TrainingConfig:
    steps: int = 300
    """Optimizer steps to train."""
    batch_size: int = 1
    """Images per step on each device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the UNet."""
    mixed_precision: str = "auto"
    """`auto` (bf16 or fp16 on a GPU that supports it, fp32 on CPU), `no`, `fp16` or `bf16`."""
    seed: int = 42
    """Seed for weights, data order and noise; the same seed on CPU repeats a run bit for bit."""
    min_snr_gamma: float = 0.0
    """Min-SNR-gamma loss weighting (5 is the paper's value); 0 turns it off."""
    noise_offset: float = 0.0
    """Noise offset (for example 0.05) to learn very dark and very bright images; 0 turns it off."""
    save_every: int = 0
    """Write a resumable checkpoint every N steps; 0 writes one only on stop."""
    keep_last: int = 2
    """Complete checkpoints to keep; older ones are pruned after a new one is complete."""
    num_processes: int = 1
    """Processes (GPUs) to train on; more than 1 launches through accelerate."""
    gpus: str = ""
    """GPU ids to train on, like "0,1" (one process each); empty: the first `num_processes` GPUs."""
    log_with: str = "auto"
    """Where loss, learning rate and samples are logged: `auto` (TensorBoard when installed), `tensorboard`,
    `wandb` (opt-in) or `none`. TensorBoard files go to `<run folder>/logs/<name>/`."""
    num_threads: int = 1
    """CPU threads per process (torch's intra-op threads), pinned by the CLI and the job runner so a resumed run
    computes like the first. 1 (the default) is the same on every machine and is what each process of a
    multi-GPU run gets anyway; a GPU step does little CPU work. Raise it to train on a CPU; 0 uses every core."""
    validate_every: int = 0
    """Compute the validation loss every N steps (and at the last step); 0 turns validation off. Needs a
    validation set (`data.validation_fraction` or `data.validation_dir`). The best step's LoRA is kept as
    `<name>.best.safetensors`."""
    validation_timesteps: int = 4
    """Timesteps (evenly spaced over the noise schedule, with fixed noise) at which each validation image is
    scored, so the validation loss changes only when the LoRA does."""
    early_stop_patience: int = 0
    """Stop when the validation loss has not improved for this many checks in a row (the best and the last
    LoRA are exported); 0 turns early stopping off. Needs `train.validate_every` > 0."""


@dataclass
class SampleConfig:
    every_n_steps: int = 0
    """Render sample images every N steps (and at the end); 0 turns samples off."""
    prompts: list[str] = field(default_factory=list)
    """Prompts to sample; empty uses the first caption of the dataset."""
    negative_prompt: str = ""
    """Negative prompt for samples."""
    seed: int = 0
    """Seed of every sample, so steps can be compared."""
    steps: int = 20
    """Denoising steps per sample."""
    guidance: float = 7.5
    """Classifier-free guidance scale."""


@dataclass
class ExportConfig:
    output_dir: str = "output"
    """Folder for the LoRA files, samples and the saved config."""
    name: str = "lora"
    """File name of the LoRA (`<name>.safetensors`, `<name>.peft.safetensors`)."""
    dtype: str = "float16"
    """Tensor type of the exported files: `float16`, `bfloat16` or `float32`."""


@dataclass
class TrainConfig:
    version: int = CONFIG_VERSION
    """Format version of this file."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short hash of every setting, stored in exported files to tell runs apart."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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


def config_from_dict(data: dict[str, Any], where: str | None = None) -> TrainConfig:
    """Build a TrainConfig from nested dicts, refusing unknown keys and wrong types by dotted name."""
    problems: list[str] = []
    config = _build(TrainConfig, data, "", problems)
    try:
        validate(config)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems, where=where)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config (or the defaults when `path` is None) and apply dotted-key overrides."""
    data: dict[str, Any] = {}
    where = None
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError([f"the file {path} does not exist; pass an existing TOML file"])
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError([f"is not valid TOML: {err}"], where=where) from err
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data, where=where)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the config as TOML (atomically), with its `version`."""
    from trainer.fileio import atomic_write_bytes

    return atomic_write_bytes(Path(path), config_to_toml(config).encode("utf-8"))


def config_to_toml(config: TrainConfig) -> str:
    return tomli_w.dumps(config.to_dict())


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (for help texts in the CLI and UI)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value  # type: ignore[union-attr]
    return docs


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'} must be a table, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            problems.append(f"{dotted} is not a known setting{hint}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted + ".", problems)
            continue
        coerced = _coerce(value, hint)
        if coerced is _BAD:
            problems.append(f"{dotted} must be {_type_name(hint)}, got {value!r}")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)


_BAD = object()


def _coerce(value: Any, hint: Any) -> Any:
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return _BAD
        items = [_coerce(v, item) for v in value]
        return _BAD if any(i is _BAD for i in items) else items
    return value


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0]).removeprefix('a ')}s"
    return names.get(hint, str(hint))
