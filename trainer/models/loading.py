"""Load the base model a run trains on: a tiny name, a hub id, a diffusers folder or a single file.

    base = load_base(config.model)   # Base(pipe, family, prediction_type, default_resolution, source)

Hub ids go through the normal Hugging Face cache (`HF_HOME`); with `HF_HUB_OFFLINE=1` they load from it,
and when a model is not there the error says what to download. Nothing but safetensors is read unless
`model.allow_pickle` is set, and then only with `torch.load(weights_only=True)`; no remote code runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from trainer.config import ModelConfig
from trainer.errors import ModelError
from trainer.models.families import FAMILIES, Family, family_for_pipeline
from trainer.models.resolution import resolution_of
from trainer.models.single_file import PICKLE_SUFFIXES, load_single_file, refuse_pickle
from trainer.models.tiny import TINY_NAMES, TINY_RESOLUTION, load_tiny_pipeline

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Base:
    """A loaded base model: the diffusers pipeline, its family and what training needs from it."""

    pipe: object
    family: Family
    prediction_type: str
    """`epsilon` or `v_prediction`: from the scheduler config unless `model.prediction_type` overrides it."""
    default_resolution: int
    """The model's own training resolution (128 for the tiny models, 512/768/1024 for real ones)."""
    source: str
    """What `model.base_model` named, as written in the LoRA's metadata."""


def load_base(model: ModelConfig, dtype=None) -> Base:
    """Load `model.base_model` (see the module docstring) on the CPU; the caller moves it."""
    name = model.base_model.strip()
    if name in TINY_NAMES:
        pipe, resolution = load_tiny_pipeline(name), TINY_RESOLUTION[TINY_NAMES[name]]
    else:
        pipe = _load_pipeline(name, model, dtype)
        resolution = resolution_of(pipe.unet.config, pipe.vae.config)
    family = family_for_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)
    prediction = model.prediction_type
    if prediction == "auto":
        prediction = pipe.scheduler.config.get("prediction_type") or family.default_prediction_type
    # The loop builds its training scheduler from this config, so overrides reach training and samples.
    if model.prediction_type != "auto" or model.zero_terminal_snr:
        pipe.scheduler = run_scheduler(pipe.scheduler, prediction, model.zero_terminal_snr)
    return Base(pipe, family, prediction, int(resolution), name)


def run_scheduler(scheduler, prediction_type: str, zero_terminal_snr: bool):
    """The pipeline's scheduler with the run's prediction type; with zero terminal SNR, DDIM with rescaled
    betas and trailing timesteps (the combination Lin et al. 2023 prescribe)."""
    from diffusers import DDIMScheduler

    if zero_terminal_snr:
        return DDIMScheduler.from_config(scheduler.config, prediction_type=prediction_type,
                                         rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def _load_pipeline(name: str, model_config, dtype):
    path = Path(name).expanduser()
    if path.is_file():
        pipe, _ = load_single_file(path, model_config.base_config, model_config.allow_pickle, dtype)
        return pipe
    if path.is_dir():
        return _from_folder(path, model_config.allow_pickle, dtype, where=str(path))
    suffixes = (".safetensors", *PICKLE_SUFFIXES)
    looks_like_path = name.startswith((".", "/", "~")) or path.suffix.lower() in suffixes
    if _HUB_ID.match(name) and not looks_like_path:
        return _from_hub(name, model_config.allow_pickle, dtype)
    raise ModelError("is not a tiny model name, an existing file or folder, or a hub id (org/name)",
                     where=name, fix="Use one of " + ", ".join(sorted(TINY_NAMES)) + ", a diffusers folder, "
                                     "a .safetensors checkpoint or a Hugging Face id.")


def _from_folder(folder: Path, allow_pickle: bool, dtype, where: str):
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError("is not a diffusers folder (no model_index.json)", where=where,
                         fix="Pass the folder that holds model_index.json, or a single .safetensors file.")
    class_name = _pipeline_class_name(index)
    pickled = _pickle_only_components(folder)
    if pickled:
        refuse_pickle(folder / pickled[0], allow_pickle)
    try:
        return _from_pretrained(class_name, folder, allow_pickle, dtype)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as err:
        raise ModelError(f"could not be loaded: {err}", where=where,
                         fix="Check that every component folder has its config and weights.") from err


def _pipeline_class_name(index: Path) -> str:
    class_name = _read_model_index(index).get("_class_name", "")
    known = {f.pipeline_class for f in FAMILIES.values()}
    if not isinstance(class_name, str) or class_name not in known:
        class_name = class_name if isinstance(class_name, str) else repr(class_name)
        raise ModelError(f"holds a {class_name or 'unnamed'} pipeline; LoRA Studio trains "
                         f"{', '.join(sorted(known))}", where=str(index),
                         fix="Use an SD 1.x, SD 2.x or SDXL model.")
    return class_name


_LIBRARIES = ("diffusers", "transformers")
_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
               "safety_checker", "feature_extractor", "image_encoder")
_FIX_INDEX = ("Re-download the model, or fix model_index.json: a table of component: [\"diffusers\" or "
              "\"transformers\", \"ClassName\"] pairs and a _class_name.")


def _read_model_index(index: Path) -> dict:
    """model_index.json as diffusers will use it, every field checked: diffusers imports the library each
    component names and calls its class, so a stray field ends in a traceback (or imports any module)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as err:
        raise ModelError(f"is not readable JSON ({err})", where=str(index), fix=_FIX_INDEX) from err
    if not isinstance(data, dict):
        raise ModelError(f"must be a JSON table, got {type(data).__name__}", where=str(index), fix=_FIX_INDEX)
    for key, value in data.items():
        if key.startswith("_") or value is None or value == [None, None]:
            continue
        if not isinstance(value, list) and key not in _COMPONENTS:
            continue  # a plain setting such as requires_safety_checker: false
        ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
              and value[0] in _LIBRARIES and value[1].isidentifier())
        if not ok:
            raise ModelError(f"has a component {key!r} of {json.dumps(value)[:100]}, not a [library, class] pair "
                             f"from {' or '.join(_LIBRARIES)}", where=str(index), fix=_FIX_INDEX)
    return data


def _from_pretrained(class_name: str, source, allow_pickle: bool, dtype):
    import diffusers

    extra = {"add_watermarker": False} if class_name == "StableDiffusionXLPipeline" else {}
    if class_name == "StableDiffusionPipeline":
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return getattr(diffusers, class_name).from_pretrained(
        source, torch_dtype=dtype, use_safetensors=None if allow_pickle else True, **extra)


def _pickle_only_components(folder: Path) -> list[str]:
    """Component weights present only as pickles (.bin/.ckpt/.pt), as 'component/file'."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in sub.iterdir() if f.is_file()]
        if any(f.suffix == ".safetensors" for f in files):
            continue
        found += [f"{sub.name}/{f.name}" for f in files if f.suffix in PICKLE_SUFFIXES]
    return found


def _from_hub(repo_id: str, allow_pickle: bool, dtype):
    """Resolve a hub id through the normal cache; offline (HF_HUB_OFFLINE=1) it must already be there.

    diffusers' `from_pretrained` fetches only the files the pipeline needs (not a repository's extra
    single-file checkpoints or other variants); model_index.json first tells which pipeline class it is.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        class_name = _pipeline_class_name(Path(hf_hub_download(repo_id, "model_index.json")))
        return _from_pretrained(class_name, repo_id, allow_pickle, dtype)
    except (LocalEntryNotFoundError, OSError) as err:
        missing = isinstance(err, LocalEntryNotFoundError) or constants.HF_HUB_OFFLINE
        if not missing:
            raise ModelError(f"could not be loaded from the Hugging Face hub: {err}", where=repo_id,
                             fix="Check the id (org/name) and your access to it; without safetensors weights "
                                 "pass --allow-pickle if you trust the repository.") from err
        offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise ModelError(
            f"is not (completely) in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {offline}",
            where=repo_id,
            fix=f"Download it once with network (`hf download {repo_id}` or `huggingface-cli download "
                f"{repo_id}`) into the same HF_HOME, or pass a local diffusers folder or .safetensors file.",
        ) from err
    except Exception as err:  # huggingface_hub raises many types (not found, gated, HTTP errors)
        if isinstance(err, ModelError):
            raise
        raise ModelError(f"could not be fetched from the Hugging Face hub: {err}", where=repo_id,
                         fix="Check the id (org/name) and your access to it, or pass a local model.") from err
