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
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from trainer.errors import ConfigError

CONFIG_VERSION = 1
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
QUANTIZE_CHOICES = ("none", "nf4")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "schedulefree", "adafactor")
"""The values of `optim.optimizer` (built in `trainer.optimizers`)."""
NETWORK_TYPES = ("lora", "loha", "lokr", "adalora")


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
    quantize: str = "none"
    """`nf4`: hold the frozen UNet's linear layers in 4 bits (QLoRA-style, bitsandbytes; GPU or CPU) to save
    memory; the LoRA still trains in full precision and loads on the unquantized base. `none`: off."""


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
    masked_loss: bool = True
    """Weight each image's loss by its mask where it has one: `<name>.mask.png` beside `<name>.png` (white = train,
    black = ignore, grey = in between), at latent resolution. Off: the masks are ignored (never trained as images)."""
    alpha_mask: bool = False
    """Use the alpha channel of images that have one as their loss mask (transparent = ignored), where no
    `<name>.mask.png` is given. Off: transparent pixels are trained, composited on `data.background`."""
    skip_bad_images: bool = False
    """Drop images the dataset doctor refuses (and list them) instead of refusing the whole run."""
    cache_dir: str = ""
    """Folder for the on-disk latent/text caches; empty keeps caches in memory only."""
    validation_fraction: float = 0.0
    """Fraction (0..0.5) of the dataset's images held out of training as the validation set (at least one
    image), picked with `train.seed`; 0 holds none out. Needs `train.validate_every` > 0."""
    validation_dir: str = ""
    """A folder of images (and captions) used as the validation set instead, read like `data.path`."""
    class_dir: str = ""
    """Prior preservation: a folder of class (regularization) images with captions, read like `data.path`
    (`.txt` captions, kohya `N_name` repeats); trained beside your images at `train.prior_loss_weight`.
    Images without a caption use `data.class_prompt`. Empty: no class folder."""
    class_prompt: str = ""
    """Prior preservation: the class prompt (like "a photo of a dog", without the trigger word). With
    `data.num_class_images` the base model draws that many class images once before training."""
    num_class_images: int = 0
    """Class images to generate from the base model with `data.class_prompt` (once; cached under
    `data.cache_dir`, or the run folder when that is empty, and reused by later runs); 0 generates none."""
    class_steps: int = 30
    """Denoising steps per generated class image."""
    class_seed: int = 0
    """Seed of the generated class images (image i uses class_seed + i), apart from `train.seed` so a seed
    sweep reuses the same class images."""


@dataclass
class NetworkConfig:
    type: str = "lora"
    """Adapter type: `lora`; `loha` (LyCORIS Hadamard product of two low-rank pairs, more capacity per
    parameter); `lokr` (LyCORIS Kronecker product, very small files); `adalora` (LoRA in SVD form starting at
    `rank` whose budget is pruned to an average of rank/2 over the run, kept where it matters most, exported as
    a plain LoRA of the ranks kept)."""
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
    optimizer: str = "adamw"
    """`adamw` (torch's fused AdamW), `adamw8bit` (bitsandbytes' 8-bit AdamW: about a quarter of AdamW's state;
    needs a CUDA GPU and `pip install bitsandbytes`), `prodigy` (sets its own step size: use learning_rate 1),
    `schedulefree` (AdamW without a schedule: lr_scheduler must be constant; warmup_steps is its warmup) or
    `adafactor` (transformers' Adafactor at a fixed learning rate, factored state: the least memory)."""
    learning_rate: float = 1e-4
    """Peak learning rate of the UNet LoRA (about 1e-4 for AdamW, AdamW 8-bit and Adafactor; 1.0 for Prodigy,
    which multiplies its own estimate by it)."""
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
    d_coef: float = 1.0
    """Prodigy only: scales its estimate of the step size (2 learns faster, 0.5 slower); leave
    learning_rate at 1."""


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
    ema_decay: float = 0.0
    """Keep an exponential moving average (EMA) of the LoRA weights with this decay (like 0.999) and export it as
    the LoRA; 0 turns EMA off. The average starts as a copy and its decay ramps as n/(n+9) at step n up to this
    value. Samples, the validation loss and the best LoRA use the EMA weights too."""
    ema_on_cpu: bool = False
    """Keep the EMA copy in CPU memory instead of on the training device: saves accelerator memory the size of the
    LoRA, for a copy of the LoRA to the CPU each step. May change when resuming."""
    prior_loss_weight: float = 1.0
    """Prior preservation: the loss weight of each class image (`data.class_dir` or generated), as in kohya and
    diffusers (1.0). Each epoch trains as many class samples as training samples, interleaved in the batches."""


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
    """Check every value; raise one ConfigError listing each bad field with the fix (see config_checks.py)."""
    from trainer.config_checks import validate as check

    return check(config)


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


def changed_fields(before: TrainConfig, after: TrainConfig) -> dict[str, Any]:
    """Every dotted field whose value differs in `after`, with its value there."""
    def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    old, new = flat(before.to_dict()), flat(after.to_dict())
    return {key: value for key, value in new.items() if old.get(key) != value}
