"""Bake LoRAs into a base model at chosen strengths: a checkpoint that needs no LoRA at inference.

    merge_loras("tiny", [("ink.safetensors", 0.7), ("film.safetensors", 0.3)], "merged.safetensors")
    merge_loras("model/", [("ink.safetensors", 1.0)], "merged/")     # a diffusers folder

The LoRAs load through the adapter pool (the same file checks and key mapping as previews), strengths are
set with diffusers' `set_adapters`, and `fuse_lora` adds strength * (alpha / r) * B @ A to each base weight
(peft's merge); `unload_lora_weights` then leaves the plain layers. A path ending in `.safetensors` gets a
single-file checkpoint in the original (LDM/SGM) layout A1111, ComfyUI and `--base-model` read; any other
path a diffusers folder. Weights are merged in float32 and written in `dtype` ("auto": what the base stores).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import StudioError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class MergeReport:
    out: Path
    family: str
    layout: str
    """`single-file` or `diffusers`."""
    dtype: str
    layers: int
    """Base layers that took part of a LoRA (over every component)."""
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    """LoRA file -> its keys that matched no layer and were left out (only with allow_partial)."""


def merge_loras(base_model: str, loras: list[tuple[str | Path, float]], out: str | Path, dtype: str = "auto",
                allow_partial: bool = False, overwrite: bool = False) -> MergeReport:
    """Write `out`: `base_model` with each LoRA file added at its strength."""
    from trainer.config import ModelConfig
    from trainer.generate.lorafile import read_lora_file
    from trainer.generate.pool import AdapterPool
    from trainer.lora_tools.kinds import require_plain_lora
    from trainer.models.loading import load_base

    out = Path(out)
    if not loras:
        raise StudioError("merge needs at least one LoRA", fix="Name LoRA files after the base: BASE LORA[:STRENGTH]…")
    if out.exists() and not overwrite:
        raise StudioError(f"{out} exists already", fix="Pick another --out, or pass --overwrite.")
    for path, _ in loras:
        require_plain_lora(read_lora_file(path, for_preview=False), "merge")
    out_dtype = DTYPES[dtype] if dtype != "auto" else stored_dtype(base_model)
    base = load_base(ModelConfig(base_model=base_model), dtype=torch.float32)
    pool = AdapterPool(base.pipe, device="cpu", dtype=torch.float32)
    strengths, unmatched = {}, {}
    for index, (path, strength) in enumerate(loras):
        report = pool.load(f"lora{index}", path, allow_partial=allow_partial)
        strengths[f"lora{index}"] = float(strength)
        if report.unmatched:
            unmatched[str(path)] = report.unmatched
    pool.set_strengths(strengths)
    pipe = base.pipe
    chosen = [name for name, weight in strengths.items() if weight != 0.0]
    components = [c for c in base.family.components if _has_lora(getattr(pipe, c))]
    layers = sum(_count_lora_layers(getattr(pipe, c), chosen) for c in components)
    if chosen:
        pipe.fuse_lora(components=components, adapter_names=chosen)
    pipe.unload_lora_weights()
    if out_dtype != torch.float32:
        pipe.to(dtype=out_dtype)
    metadata = {"lora_studio_base_model": base_model, "lora_studio_family": base.family.name,
                "lora_studio_merged": json.dumps([{"lora": str(p), "strength": float(s)} for p, s in loras])}
    if out.suffix.lower() == ".safetensors":
        _write_single_file(pipe, base.family.name, out, metadata)
        layout = "single-file"
    else:
        _write_folder(pipe, out, metadata, overwrite)
        layout = "diffusers"
    return MergeReport(out, base.family.name, layout, str(out_dtype).removeprefix("torch."), layers, unmatched)


def stored_dtype(base_model: str) -> torch.dtype:
    """The dtype the base's UNet weights are stored in (float32 for the tiny models)."""
    from safetensors import safe_open

    path = Path(base_model).expanduser()
    files = [path] if path.is_file() else sorted((path / "unet").glob("*.safetensors")) if path.is_dir() else []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys = [k for k in handle.keys() if k.endswith(".weight")]  # noqa: SIM118 (not iterable)
            unet = [k for k in keys if k.startswith("model.diffusion_model.")] or keys
            if unet:
                return _dtype_of(handle.get_slice(unet[0]).get_dtype())
    return torch.float32


def _dtype_of(name: str) -> torch.dtype:
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(name, torch.float32)


def _has_lora(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module is not None and any(isinstance(m, BaseTunerLayer) for m in module.modules())


def _count_lora_layers(module, adapters: list[str]) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer) and set(adapters) & set(m.scaling))


def _write_single_file(pipe, family: str, out: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from trainer.fileio import atomic_path
    from trainer.models.ldm_keys import pipeline_to_original

    with atomic_path(out) as tmp:
        save_file(pipeline_to_original(pipe, family), str(tmp), metadata={**metadata, "format": "pt"})


def _write_folder(pipe, out: Path, metadata: dict[str, str], overwrite: bool) -> None:
    """save_pretrained into a scratch folder beside `out`, then rename it into place (never half written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; a model folder is read by other tools and users
    try:
        pipe.save_pretrained(scratch, safe_serialization=True)
        (scratch / "lora_studio_merge.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        if out.exists() and overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
