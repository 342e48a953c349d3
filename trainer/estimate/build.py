"""The architecture of a run's base model, built on the meta device: real shapes, no weights, no memory.

    spec = model_spec(config.model)            # or model_spec(config.model, family="sdxl")
    parts = build_meta(spec)                   # {"unet": ..., "vae": ..., "text_encoder": ...} on "meta"

Configs come from wherever the model's configs are without reading its weights: the tiny models' own, a
diffusers folder's `*/config.json`, the published SD 1.5 / SD 2.1 / SDXL base configs shipped in
`trainer/models/assets/<family>/` (for `--family`, a single-file checkpoint, or a hub id not in the cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.config import ModelConfig
from trainer.errors import ModelError
from trainer.models.families import FAMILIES, Family

ASSETS = Path(__file__).resolve().parent.parent / "models" / "assets"
FAMILY_NAMES = tuple(FAMILIES)


@dataclass
class ModelSpec:
    """What the estimate needs of a base model: its family, default resolution and component configs."""

    family: Family
    default_resolution: int
    unet: dict
    vae: dict
    text: dict[str, object] = field(default_factory=dict)
    """Text encoder configs (transformers `CLIPTextConfig`) by component name, in the family's order."""
    source: str = ""
    """Where the configs were read: `tiny`, a folder, or `published <family> configs`."""


def model_spec(model: ModelConfig, family: str | None = None) -> ModelSpec:
    """The spec of `model.base_model`, or of the published base model of `family` when one is named."""
    if family is not None:
        if family not in FAMILIES:
            raise ModelError(f"is not a model family; choose one of {', '.join(FAMILY_NAMES)}",
                             where=f"--family {family}", fix="Pass --family sd15, sd2 or sdxl.")
        return _from_folder(ASSETS / family, FAMILIES[family], f"published {family} configs")
    name = model.base_model.strip()
    from trainer.models.tiny import TINY_NAMES, TINY_RESOLUTION, build_tiny_pipeline

    if name in TINY_NAMES:
        pipe = build_tiny_pipeline(TINY_NAMES[name])
        fam = FAMILIES[TINY_NAMES[name]]
        return ModelSpec(fam, TINY_RESOLUTION[fam.name], dict(pipe.unet.config), dict(pipe.vae.config),
                         {n: getattr(pipe, n).config for n in fam.text_encoder_names}, source=name)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "unet" / "config.json").is_file():
        unet = _read_json(path / "unet" / "config.json")
        return _from_folder(path, FAMILIES[_family_of(unet, path)], str(path))
    if path.is_file():
        from trainer.models.single_file import detect_family, read_shapes

        fam = detect_family(read_shapes(path, model.allow_pickle), where=str(path))
        return _from_folder(ASSETS / fam, FAMILIES[fam], f"published {fam} configs (for {path.name})")
    return _from_hub(name)


def _from_hub(repo_id: str) -> ModelSpec:
    """A hub model's configs from the local Hugging Face cache only (never its weights)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*/config.json", "model_index.json"],
                                        local_files_only=True))
        unet = _read_json(folder / "unet" / "config.json")
    except Exception as err:  # not cached, not an id: huggingface_hub raises many types
        raise ModelError("has no configs in the local Hugging Face cache", where=repo_id,
                         fix="Pass --family sd15, sd2 or sdxl to estimate the published base model of that "
                             "family, or a local diffusers folder.") from err
    return _from_folder(folder, FAMILIES[_family_of(unet, folder)], repo_id)


def _from_folder(folder: Path, family: Family, source: str) -> ModelSpec:
    from transformers import CLIPTextConfig

    from trainer.models.resolution import resolution_of

    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    text = {n: CLIPTextConfig(**_read_json(folder / n / "config.json")) for n in family.text_encoder_names}
    return ModelSpec(family, int(resolution_of(unet, vae)), unet, vae, text, source)


def _family_of(unet: dict, where: Path) -> str:
    """The family from the UNet config alone (as `families.family_for_pipeline` reads it)."""
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet.get("addition_embed_type"):
        raise ModelError(f"has a UNet with {unet['addition_embed_type']!r} conditioning", where=str(where),
                         fix="Use an SD 1.x, SD 2.x or SDXL base model.")
    return "sd2" if unet.get("use_linear_projection") else "sd15"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"is not a readable config ({err})", where=str(path),
                         fix="Pass a complete diffusers folder, or --family sd15, sd2 or sdxl.") from err


def build_meta(spec: ModelSpec) -> dict[str, torch.nn.Module]:
    """Every component of the spec on the meta device (parameters and buffers alike), in float32."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights(include_buffers=True):
        parts: dict[str, torch.nn.Module] = {"unet": UNet2DConditionModel.from_config(spec.unet),
                                             "vae": AutoencoderKL.from_config(spec.vae)}
        for name, config in spec.text.items():
            # SDXL's second encoder is the one with the projection (its pooled embedding conditions the UNet).
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            parts[name] = cls(config)
    return parts


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
