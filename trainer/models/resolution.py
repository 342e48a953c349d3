"""The training resolution of a base model (what `data.resolution = 0` means), read from configs, not weights.

    size, note = native_resolution(config.model)   # (1024, None) for an SDXL file; note says when it guessed

The loop takes it from the loaded pipeline (`resolution_of(pipe.unet.config, pipe.vae.config)`); the dataset
doctor runs before any model loads, so it reads the same two configs: from a diffusers folder, from the hub
cache (never the network), or for a single file from its family (its key names, read from the safetensors
header) and the configs a single-file load would use (`--base-config`, the shipped ones, or the tiny model's).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import ModelConfig
from trainer.errors import StudioError

GUESS = 512
"""Assumed when nothing can be read (the note says so and how to set it)."""


def resolution_of(unet_config, vae_config) -> int:
    """Latent size times the VAE's downsampling: the pixels the UNet was trained at."""
    return int(unet_config["sample_size"]) * 2 ** (len(vae_config["block_out_channels"]) - 1)


def native_resolution(model: ModelConfig) -> tuple[int, str | None]:
    """(resolution, None) read as the loop will get it, or (a fallback, a note saying why it is a guess)."""
    from trainer.models.tiny import TINY_NAMES, TINY_RESOLUTION

    name = model.base_model.strip()
    if name in TINY_NAMES:
        return TINY_RESOLUTION[TINY_NAMES[name]], None
    path = Path(name).expanduser()
    try:
        if path.is_file():
            return _single_file(path, model)
        return _from_configs(name), None
    except (StudioError, OSError, KeyError, ValueError) as err:
        return GUESS, (f"its resolution could not be read ({err}); assumed {GUESS} px: set data.resolution "
                       "(--resolution) to check the run's real size")


def _single_file(path: Path, model: ModelConfig) -> tuple[int, str | None]:
    from trainer.models.families import FAMILIES
    from trainer.models.single_file import (
        _CONV_IN,
        _REAL_WIDTH,
        ASSETS,
        PICKLE_SUFFIXES,
        detect_family,
        read_shapes,
    )

    if path.suffix.lower() in PICKLE_SUFFIXES:  # its key names are only known after loading every weight
        if model.base_config:
            return _from_configs(model.base_config), None
        return GUESS, (f"is a pickle checkpoint, whose family is only known once all its weights load; assumed "
                       f"{GUESS} px: set data.resolution (--resolution) or use a .safetensors file")
    shapes = read_shapes(path, model.allow_pickle)
    family = detect_family(shapes, where=str(path))
    if model.base_config:
        return _from_configs(model.base_config), None
    width = shapes[_CONV_IN][0]
    if width == _REAL_WIDTH:
        return _from_configs(str(ASSETS / family)), None
    from trainer.models import tiny

    tiny_unets = {"sd15": tiny._SD15_UNET, "sd2": tiny._SD2_UNET, "sdxl": tiny._SDXL_UNET}
    if tiny_unets[family]["block_out_channels"][0] == width:
        return resolution_of(tiny_unets[family], tiny._SD_VAE), None
    guess = FAMILIES[family].default_resolution
    return guess, (f"is a {family} UNet {width} channels wide with no --base-config; assumed the family's "
                   f"{guess} px")


def _from_configs(source: str) -> int:
    """From `unet/config.json` and `vae/config.json` of a diffusers folder or a hub id in the local cache."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = [folder / "unet" / "config.json", folder / "vae" / "config.json"]
    else:
        from huggingface_hub import try_to_load_from_cache

        found = [try_to_load_from_cache(source, f"{part}/config.json") for part in ("unet", "vae")]
        if not all(isinstance(f, str) for f in found):
            raise ValueError(f"{source} is neither a folder nor a model in the local Hugging Face cache")
        files = [Path(f) for f in found]  # type: ignore[arg-type]
    unet, vae = (json.loads(f.read_text(encoding="utf-8")) for f in files)
    return resolution_of(unet, vae)
