"""Write a trained LoRA as `.safetensors` that diffusers, AUTOMATIC1111/Forge and ComfyUI load, with metadata.

    paths = export_lora(base, lora_configs, config, step=300)
    # <output_dir>/<name>.safetensors       kohya/A1111 keys: lora_unet_….lora_down.weight, .lora_up.weight, .alpha
    # <output_dir>/<name>.peft.safetensors  diffusers/PEFT keys: unet.….lora_A.weight, with the adapter config
    read_lora_metadata(paths[0])["ss_network_dim"]
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from trainer import dora_export as dora
from trainer import lycoris_export as lyco
from trainer.config import TrainConfig
from trainer.errors import LoraFileError
from trainer.fileio import atomic_path
from trainer.network import ADAPTER

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the key diffusers' save/load_lora_weights use
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def peft_state_dict(base, lora_configs: dict[str, LoraConfig]) -> dict[str, torch.Tensor]:
    """The trained LoRA tensors in diffusers/PEFT keys (`unet.…lora_A.weight`, `text_encoder.…`)."""
    tensors = {}
    for component in lora_configs:
        module = base.pipe.unet if component == "unet" else getattr(base.pipe, component)
        for key, value in get_peft_model_state_dict(module, adapter_name=ADAPTER).items():
            tensors[f"{component}.{key}"] = value.detach().to("cpu").contiguous()
    return tensors


def kohya_state_dict(base, peft_tensors: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """kohya/A1111 keys, each layer named by the model family (`Family.kohya_unet_key`/`kohya_text_key`):
    SD 1/2 keep diffusers' module paths, SDXL takes sd-scripts' original-UNet names (`input_blocks_4_1_…`),
    text encoders are `lora_te_…` or `lora_te1_…`/`lora_te2_…`. `.alpha` is the real alpha."""
    kohya = {}
    for key, value in peft_tensors.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)  # "down_blocks.….to_q", "A.weight"
        stem = kohya_stem(base, component, module)
        kohya[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return kohya


def kohya_stem(base, component: str, module: str) -> str:
    """The kohya/A1111 name of one adapted layer, asked of the model family."""
    if component == "unet":
        return base.family.kohya_unet_key(module, base.pipe.unet.config)
    return base.family.kohya_text_key(component, module)


def loader_state_dict(base, peft_tensors: dict[str, torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    """The `<name>.safetensors` tensors for `network.type`: kohya LoRA (DoRA: with ComfyUI's `dora_scale`),
    LyCORIS LoHa/LoKr, or AdaLoRA's kept ranks as kohya LoRA (trainer/lycoris_export.py, dora_export.py)."""
    network = config.network
    if network.use_dora:
        kohya = kohya_state_dict(base, dora.split_magnitudes(peft_tensors), _kohya_alpha(config))
        dtype = next(iter(peft_tensors.values())).dtype
        components = sorted({k.split(".", 1)[0] for k in peft_tensors})
        for key, scale in dora.comfy_dora_scales(base, components).items():
            kohya[f"{kohya_stem(base, *key.split('.', 1))}.dora_scale"] = scale.to(dtype)
        return kohya
    if network.type in ("loha", "lokr"):
        return lyco.lycoris_state_dict(peft_tensors, lambda c, m: kohya_stem(base, c, m), network)
    if network.type == "adalora":  # plain_lora_from_adalora folded the scale in: alpha = rank
        return lyco.trim_pruned_ranks(kohya_state_dict(base, peft_tensors, float(network.rank)))
    return kohya_state_dict(base, peft_tensors, _kohya_alpha(config))


def kohya_refusal(config: TrainConfig) -> str | None:
    """Why the kohya file cannot carry this LoRA faithfully, or None when it can (every type can today; DoRA's
    file says which loaders read its `dora_scale`, trainer/dora_export.py)."""
    return None


def lora_metadata(base, config: TrainConfig, step: int) -> dict[str, str]:
    network = config.network
    family = base.family
    return {
        "ss_network_module": lyco.NETWORK_MODULE[network.type],
        "ss_network_dim": str(network.rank),
        "ss_network_alpha": str(_kohya_alpha(config)),
        **family.metadata(base.prediction_type),
        "ss_output_name": config.export.name,
        "ss_steps": str(step),
        "ss_resolution": str(config.data.resolution or base.default_resolution),
        "ss_learning_rate": str(config.optim.learning_rate),
        "ss_sd_model_name": base.source,
        "ss_network_args": json.dumps({"algo": network.type, "use_dora": network.use_dora,
                                       "use_rslora": network.use_rslora}),
        "lora_studio_base_model": base.source,
        "lora_studio_family": family.name,
        "lora_studio_prediction_type": base.prediction_type,
        "lora_studio_config": json.dumps(config.to_dict(), sort_keys=True),
        "lora_studio_config_hash": config.hash(),
    }


def export_lora(base, lora_configs: dict[str, LoraConfig], config: TrainConfig, step: int,
                name: str | None = None, extra_metadata: dict[str, str] | None = None) -> list[Path]:
    """Write both files atomically, then read them back and check that they hold the same LoRA.

    `name` replaces `export.name` as the file stem (the best step's `<name>.best`); `extra_metadata` is added
    to both files' metadata (`ss_best_step`).
    """
    out_dir = Path(config.export.output_dir)
    name = name or config.export.name
    dtype = DTYPES[config.export.dtype]
    peft_tensors = {k: v.to(dtype) for k, v in peft_state_dict(base, lora_configs).items()}
    if config.network.type == "adalora":  # diffusers and peft's LoRA loaders read plain LoRA, not AdaLoRA
        peft_tensors, lora_configs = lyco.plain_lora_from_adalora(peft_tensors, lora_configs)
    refusal = kohya_refusal(config)
    metadata = {**lora_metadata(base, config, step), **(extra_metadata or {})}
    if refusal:
        warnings.warn(refusal, stacklevel=2)
        metadata["lora_studio_kohya_skipped"] = refusal
    note = (dora.DORA_NOTE if config.network.use_dora else lyco.DIFFUSERS_NOTE.get(config.network.type, "")
            ).format(name=name)
    if note:
        warnings.warn(note, stacklevel=2)
        metadata["lora_studio_diffusers_note"] = note

    kohya_path = out_dir / f"{name}.safetensors"
    peft_path = out_dir / f"{name}.peft.safetensors"
    peft_metadata = dict(metadata, format="pt", **adapter_metadata(lora_configs))

    with atomic_path(peft_path) as tmp:
        save_file(peft_tensors, str(tmp), metadata=peft_metadata)
    if refusal:
        return [peft_path]
    with atomic_path(kohya_path) as tmp:
        kohya_tensors = loader_state_dict(base, peft_tensors, config)
        if config.network.type == "adalora":
            metadata["lora_studio_adalora_ranks"] = json.dumps(lyco.kept_ranks(kohya_tensors), sort_keys=True)
        save_file(kohya_tensors, str(tmp), metadata=dict(metadata, format="pt"))
    _check_exported(kohya_path, peft_path, pruned=config.network.type == "adalora")
    return [kohya_path, peft_path]


def adapter_metadata(lora_configs: dict[str, LoraConfig]) -> dict[str, str]:
    """Each component's LoraConfig (rank, alpha, targets) in the metadata key diffusers reads on load."""
    meta = {}
    for component, lora_config in lora_configs.items():
        for key, value in lora_config.to_dict().items():
            meta[f"{component}.{key}"] = sorted(value) if isinstance(value, set) else value
    return {ADAPTER_METADATA_KEY: json.dumps(meta, sort_keys=True, default=str)}


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header alone (no tensors loaded)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise LoraFileError("is not a safetensors file (shorter than its header)", where=str(path))
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100_000_000):
            raise LoraFileError("is not a safetensors file (its header claims more bytes than the file holds)",
                                where=str(path), fix="Download it again; the file is truncated or not safetensors.")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LoraFileError("is not a safetensors file (unreadable header)", where=str(path)) from err
    return dict(header.get("__metadata__") or {})


def _kohya_alpha(config: TrainConfig) -> float:
    """rsLoRA scales by alpha/sqrt(rank); kohya files scale by alpha/rank, so rsLoRA alpha is rescaled."""
    network = config.network
    return network.alpha * network.rank**0.5 if network.use_rslora else network.alpha


def _check_exported(kohya_path: Path, peft_path: Path, pruned: bool = False) -> None:
    """Both files hold the same layers (AdaLoRA's kohya file may have dropped layers pruned to rank 0)."""
    from safetensors import safe_open

    with safe_open(str(kohya_path), "pt") as kohya, safe_open(str(peft_path), "pt") as peft:
        kohya_keys, peft_keys = kohya.keys(), peft.keys()  # safe_open handles are not iterable
    kohya_pairs = sum(1 for k in kohya_keys if k.endswith(".alpha"))
    peft_pairs = len({lyco.split_key(k.removesuffix(".weight"))[:2] for k in peft_keys})
    if (kohya_pairs > peft_pairs if pruned else kohya_pairs != peft_pairs) or peft_pairs == 0:
        raise LoraFileError(f"do not hold the same layers ({kohya_pairs} kohya vs {peft_pairs} PEFT)",
                            where=f"{kohya_path} and {peft_path}",
                            fix="This is a bug in LoRA Studio's export; please report it with the config.")
