"""The one place where Train-tab widgets map onto `TrainConfig`: field list, presets, values <-> config.

    widgets = build_fields(ESSENTIALS)                 # inside a gr.Blocks context
    config = values_to_config({"train.steps": 30, ...}, home)
    values = config_to_values(config)                  # to fill the widgets back (e.g. from a job)

Help texts come from the docstrings under the config fields (`field_docs`), so the form and the
TOML reference never disagree.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.security import SecurityError, inside, safe_name
from trainer.config import OPTIMIZERS, TrainConfig, config_from_dict, field_docs


@dataclass(frozen=True)
class Field:
    key: str
    """Dotted config key, e.g. `train.steps`."""
    label: str
    """What the user reads."""
    choices: tuple[str, ...] = ()
    """For a dropdown; empty: the widget follows the field's type."""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    """With minimum and maximum: a slider."""


ESSENTIALS = (
    Field("model.base_model", "Base model"),
    Field("export.name", "LoRA name"),
    Field("train.steps", "Steps", minimum=1, maximum=5000, step=1),
    Field("network.rank", "Rank", minimum=1, maximum=128, step=1),
    Field("optim.learning_rate", "Learning rate"),
    Field(
        "data.resolution",
        "Resolution (0 = the model's own)",
        choices=("0", "64", "128", "256", "512", "768", "1024"),
    ),
    Field("data.trigger_word", "Trigger word"),
)
SAMPLES = (
    Field("sample.every_n_steps", "Sample every N steps (0 = off)"),
    Field("sample.prompts", "Sample prompts (one a line; empty: the first caption)"),
    Field("sample.seed", "Sample seed"),
    Field("sample.steps", "Sample denoising steps", minimum=1, maximum=100, step=1),
)
ADVANCED = (
    Field("network.type", "Adapter type", choices=("lora", "loha", "lokr", "adalora")),
    Field("network.alpha", "Alpha"),
    Field("network.dropout", "LoRA dropout", minimum=0, maximum=0.9, step=0.05),
    Field("network.train_text_encoder", "Train the text encoder too"),
    Field("train.batch_size", "Batch size"),
    Field("train.gradient_accumulation_steps", "Gradient accumulation steps"),
    Field("optim.optimizer", "Optimizer", choices=OPTIMIZERS),
    Field("optim.d_coef", "Prodigy: step-size scale (d_coef)"),
    Field("optim.lr_scheduler", "LR schedule", choices=("constant", "linear", "cosine")),
    Field("optim.warmup_steps", "Warmup steps"),
    Field("train.mixed_precision", "Mixed precision", choices=("auto", "no", "fp16", "bf16")),
    Field("train.gradient_checkpointing", "Gradient checkpointing"),
    Field("model.quantize", "Quantize the frozen UNet (nf4: 4-bit, saves memory)", choices=("none", "nf4")),
    Field("train.seed", "Seed"),
    Field("train.min_snr_gamma", "Min-SNR gamma (0 = off)"),
    Field("train.noise_offset", "Noise offset"),
    Field("train.save_every", "Checkpoint every N steps (0 = only on stop)"),
    Field("data.bucketing", "Aspect-ratio buckets"),
    Field("data.flip", "Random horizontal flip"),
    Field("data.shuffle_tags", "Shuffle caption tags"),
    Field("data.caption_dropout", "Caption dropout", minimum=0, maximum=1, step=0.05),
    Field("data.skip_bad_images", "Skip images the dataset doctor refuses (and list them) instead of stopping"),
    Field("data.masked_loss", "Masked loss: weight by <name>.mask.png files"),
    Field("data.alpha_mask", "Masked loss: use the alpha channel of images without a mask file"),
    Field("export.dtype", "Saved tensor type", choices=("float16", "bfloat16", "float32")),
    Field("data.validation_fraction", "Validation: fraction of images held out", minimum=0, maximum=0.5,
          step=0.05),
    Field("train.validate_every", "Validation loss every N steps (0 = off)"),
    Field("train.validation_timesteps", "Validation timesteps per image"),
    Field("train.early_stop_patience", "Early stop after N checks without improvement (0 = off)"),
    Field("train.ema_decay", "EMA of the LoRA weights: decay (0 = off; like 0.999)"),
    Field("train.ema_on_cpu", "Keep the EMA copy on the CPU"),
    Field("data.class_dir", "Prior preservation: class images dataset (a dataset name; empty = none)"),
    Field("data.class_prompt", "Prior preservation: class prompt"),
    Field("data.num_class_images", "Prior preservation: class images to generate (0 = none)"),
    Field("data.class_steps", "Prior preservation: denoising steps per generated class image"),
    Field("data.class_seed", "Prior preservation: seed of the generated class images"),
    Field("train.prior_loss_weight", "Prior preservation: loss weight of class images"),
)
ALL_FIELDS = ESSENTIALS + SAMPLES + ADVANCED

PRESETS: dict[str, dict[str, Any]] = {
    "Quick test": {
        "train.steps": 30,
        "network.rank": 4,
        "network.alpha": 4.0,
        "optim.learning_rate": 1e-3,
        "optim.lr_scheduler": "constant",
        "sample.every_n_steps": 10,
        "data.flip": False,
    },
    "Style": {
        "train.steps": 1500,
        "network.rank": 16,
        "network.alpha": 16.0,
        "optim.learning_rate": 1e-4,
        "optim.lr_scheduler": "cosine",
        "optim.warmup_steps": 50,
        "sample.every_n_steps": 250,
        "data.flip": True,
        "train.min_snr_gamma": 5.0,
        "data.validation_fraction": 0.1,
        "train.validate_every": 100,
    },
    "Character": {
        "train.steps": 1200,
        "network.rank": 16,
        "network.alpha": 8.0,
        "optim.learning_rate": 1e-4,
        "optim.lr_scheduler": "cosine",
        "optim.warmup_steps": 50,
        "sample.every_n_steps": 200,
        "data.flip": False,
        "data.shuffle_tags": True,
        "train.min_snr_gamma": 5.0,
        "data.validation_fraction": 0.1,
        "train.validate_every": 100,
    },
}
"""Each preset's values where they differ from the config defaults; every other field it sets to the default."""

PRESET_HELP: dict[str, str] = {
    "Quick test": "Quick test: 30 steps at a high learning rate, to check that the data and settings run at all.",
    "Style": "Style: a long run that learns a look (colours, strokes, lighting), with flips and validation.",
    "Character": "Character: learns one subject or face; no flips (faces are not symmetric), shuffled tags.",
}
"""One sentence a preset: what it is for (shown under the preset radio)."""

USER_FIELDS = frozenset({
    "model.base_model", "export.name", "sample.prompts", "data.trigger_word", "data.class_dir",
    "data.class_prompt", "data.num_class_images", "data.masked_loss", "data.alpha_mask", "data.skip_bad_images",
})
"""Fields about the user's own data and names: a preset leaves them as the user set them."""


def _section(key: str) -> tuple[type, str]:
    section, name = key.split(".")
    return typing.get_type_hints(TrainConfig)[section], name


def field_type(key: str) -> Any:
    cls, name = _section(key)
    return typing.get_type_hints(cls)[name]


def default_value(key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(TrainConfig(), section), name)


def _help(key: str) -> str:
    cls, name = _section(key)
    return field_docs(cls).get(name, "").replace("`", "")


def make_widget(f: Field, value: Any = None) -> gr.components.Component:
    """One widget for one field, typed from the config dataclass, its help text from the docstring."""
    kind = field_type(f.key)
    value = default_value(f.key) if value is None else value
    common = {"label": f.label, "info": _help(f.key), "elem_id": "field-" + f.key.replace(".", "-")}
    if f.choices:
        return gr.Dropdown(list(f.choices), value=str(value), allow_custom_value=False, **common)
    if kind is bool:
        return gr.Checkbox(value=value, **common)
    if f.minimum is not None and f.maximum is not None:
        return gr.Slider(f.minimum, f.maximum, value=value, step=f.step, **common)
    if kind is int:
        return gr.Number(value=value, precision=0, **common)
    if kind is float:
        return gr.Number(value=value, **common)
    if typing.get_origin(kind) is list:
        return gr.Textbox(value="\n".join(value), lines=2, **common)
    return gr.Textbox(value=value, **common)


def param_name(key: str) -> str:
    """The API parameter name of a field (`train.steps` -> `train_steps`), for gradio_client callers."""
    return key.replace(".", "_")


def build_fields(fields: tuple[Field, ...]) -> dict[str, gr.components.Component]:
    """Create the widgets of `fields` in the current layout, keyed by dotted config key."""
    return {f.key: make_widget(f) for f in fields}


def _coerce(key: str, value: Any) -> Any:
    kind = field_type(key)
    if value is None or value == "":
        return default_value(key) if kind is not str else ""
    if typing.get_origin(kind) is list:
        return [line.strip() for line in str(value).splitlines() if line.strip()]
    if kind is int and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        number = float(value)
        return int(number) if number.is_integer() else value
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # config_from_dict then names the field and the expected type
    return value


def values_to_config(values: dict[str, Any], home: Path, dataset: str | None = None) -> TrainConfig:
    """Form values (dotted key -> widget value) and a dataset name -> a validated TrainConfig.

    Raises ConfigError naming each bad field, or SecurityError for a dataset name that is not plain.
    """
    data: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = _coerce(key, value)
    if dataset is not None:
        folder = inside(home / "datasets", safe_name(dataset, what="dataset name"))
        data.setdefault("data", {})["path"] = str(folder)
    class_dataset = data.get("data", {}).get("class_dir")
    if class_dataset:  # like the dataset: a name under <home>/datasets, never a free path on the server
        folder = inside(home / "datasets", safe_name(class_dataset, what="class images dataset name"))
        data["data"]["class_dir"] = str(folder)
    return config_from_dict(data, where="the Train form")


def config_to_values(config: TrainConfig, fields: tuple[Field, ...] = ALL_FIELDS) -> dict[str, Any]:
    """The widget values that show `config` (lists become one line each, dropdowns strings)."""
    out = {}
    for f in fields:
        section, name = f.key.split(".")
        value = getattr(getattr(config, section), name)
        if isinstance(value, list):
            value = "\n".join(value)
        elif f.choices:
            value = str(value)
        elif f.key == "data.class_dir" and value:
            value = Path(value).name  # the form names datasets (see values_to_config)
        out[f.key] = value
    return out


def preset_updates(preset: str | None) -> dict[str, Any]:
    """The widget values a preset sets: every form field but USER_FIELDS, to the preset's value or the
    config default, so switching presets leaves nothing of the previous one behind. No preset: nothing."""
    if preset not in PRESETS:
        return {}
    config = TrainConfig()
    for key, value in PRESETS[preset].items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return {k: v for k, v in config_to_values(config).items() if k not in USER_FIELDS}


def preset_help(preset: str | None) -> str:
    """The line under the preset radio: what the chosen preset is for."""
    if preset not in PRESET_HELP:
        return "Pick a preset to fill the form for a quick test, a style or a character; then adjust."
    return PRESET_HELP[preset]


def unless_shown(value: Any, shown: Any) -> Any:
    """`value` as an update for a field whose event sent `shown`, or no update when they are equal. gradio fires a
    dropdown's change more than once a pick; a repeat that wrote the same value again would land over whatever the
    user typed since, so a handler writing a field the user can edit writes only what changed."""
    return gr.update() if value == shown else value


def default_lora_name(dataset: str | None, current: str | None, datasets: tuple[str, ...] = ()) -> str | None:
    """The LoRA name to show after the user picks `dataset`: the dataset's name when the name field is empty,
    still the default, or still a dataset's name (taken from one picked before); None keeps what is shown: a typed
    name, or the suggestion itself (gradio fires a dropdown's change more than once a pick, and a repeat that wrote
    the name again would land over whatever the user typed since)."""
    if not dataset:
        return None
    untouched = {"", default_value("export.name"), *datasets}
    if (current or "").strip() not in untouched:
        return None
    try:
        suggested = safe_name(dataset, what="dataset name")
    except SecurityError:  # a name the library would refuse is not suggested; Start names the problem
        return None
    return None if suggested == current else suggested


def dataclass_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config tree (for checking that the form names only real fields)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += dataclass_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys
