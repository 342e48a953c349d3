"""Load a base model for training or generation: the embedded tiny model or a local diffusers folder.

    base = load_base(ModelConfig(base_model="tiny"))
    base.pipe, base.family, base.prediction_type
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import ModelConfig
from trainer.errors import ModelError
from trainer.models.families import Family, family_for_pipeline
from trainer.models.tiny import TINY_NAMES, TINY_RESOLUTION, build_tiny_pipeline


@dataclass
class Base:
    pipe: object
    family: Family
    prediction_type: str
    default_resolution: int
    source: str


def load_base(model: ModelConfig) -> Base:
    """Load `model.base_model` with every weight on the CPU in float32; the caller moves it."""
    name = model.base_model.strip()
    if name in TINY_NAMES:
        family_key = TINY_NAMES[name]
        pipe = build_tiny_pipeline(family_key)
        resolution = TINY_RESOLUTION[family_key]
    elif Path(name).is_dir():
        pipe = _load_diffusers_folder(Path(name))
        resolution = None
    else:
        raise ModelError(f"is not a known base model ({name!r})", where="model.base_model",
                         fix="Use 'tiny' or a local diffusers folder (for example one written by "
                             "`lora-studio tiny-model DIR`).")
    family = family_for_pipeline(pipe)
    if resolution is None:
        resolution = _resolution_from_unet(pipe) or family.default_resolution
    prediction = model.prediction_type
    if prediction == "auto":
        prediction = getattr(pipe.scheduler.config, "prediction_type", family.default_prediction_type)
    return Base(pipe, family, prediction, resolution, name)


def _load_diffusers_folder(folder: Path):
    from diffusers import DiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise ModelError("is not a diffusers folder (no model_index.json)", where=str(folder),
                         fix="Point --base-model at the folder that holds model_index.json.")
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                 use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"could not be loaded as a diffusers pipeline ({err})", where=str(folder),
                         fix="Check that the folder is complete and holds .safetensors weights.") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _resolution_from_unet(pipe) -> int | None:
    sample_size = getattr(pipe.unet.config, "sample_size", None)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(sample_size * factor) if isinstance(sample_size, int) else None
