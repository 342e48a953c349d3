"""LoHa and LoKr adapters from LoRA Studio's PEFT files (`<name>.peft.safetensors`), for the adapter pool.

    adapter = plan_peft_adapter(pipe, read_lora_file("ink.peft.safetensors"))   # format "peft-loha"
    inject_peft_adapter(pipe, adapter, "ink")      # peft's own LoHa/LoKr layers, one adapter named "ink"

diffusers' LoRA loader reads LoRA layers only, so a LyCORIS file cannot go through `load_lora_weights`. The
PEFT twin that every LoHa/LoKr run writes holds the same tensors in peft's keys (`unet.….hada_w1_a`) and each
component's `LoHaConfig`/`LoKrConfig` in the metadata key diffusers uses for LoRA; that is enough to rebuild
the adapter with `add_adapter` and `set_peft_model_state_dict`, after which peft's layers take strengths
(`set_scale`), mixes, disable and fuse exactly as LoRA layers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from trainer.errors import LoraFileError

KINDS = {"hada_": "LoHa", "lokr_": "LoKr"}
"""peft's key prefix for each LyCORIS kind it implements."""


@dataclass
class PeftAdapter:
    """A LoHa/LoKr PEFT file matched against a pipeline: per component, its peft config and state dict."""

    kind: str
    configs: dict[str, object]
    state_dicts: dict[str, dict[str, torch.Tensor]]
    modules: set[str] = field(default_factory=set)
    unmatched: list[str] = field(default_factory=list)
    rank: int = 0


def lycoris_kind(keys) -> str | None:
    """`LoHa` or `LoKr` when the keys hold peft's (or LyCORIS') tensors of that kind, else None."""
    for key in keys:
        for prefix, kind in KINDS.items():
            if f".{prefix}" in key:
                return kind
    return None


def plan_peft_adapter(pipe, lora, allow_partial: bool = False) -> PeftAdapter:
    """Match every key of `lora` (a `LoraFile` of format `peft-loha`/`peft-lokr`) to a layer of the pipeline's
    components and rebuild each component's peft config from the file's metadata."""
    from peft import LoHaConfig, LoKrConfig

    from trainer.models.families import family_for_pipeline

    kind = lycoris_kind(lora.tensors)
    config_cls = LoHaConfig if kind == "LoHa" else LoKrConfig
    meta = _adapter_metadata(lora)
    components = [c for c in family_for_pipeline(pipe).components if getattr(pipe, c, None) is not None]
    adapter = PeftAdapter(kind=kind, configs={}, state_dicts={})
    for component in components:
        prefix = f"{component}."
        part = {k.removeprefix(prefix): v for k, v in lora.tensors.items() if k.startswith(prefix)}
        if not part:
            continue
        fields = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)}
        if not fields:
            raise LoraFileError(f"has {kind} tensors for {component} but no adapter config for it",
                                where=str(lora.path), fix="Load the .peft.safetensors file the run wrote, unchanged.")
        modules = dict(getattr(pipe, component).named_modules())
        kept: dict[str, torch.Tensor] = {}
        for key, tensor in part.items():
            module_name = _module_of(key)
            found = _find_module(modules, module_name)
            if found is None:
                adapter.unmatched.append(f"{component}.{key}")
                continue
            kept[key if found == module_name else key.replace(module_name, found, 1)] = tensor
            adapter.modules.add(f"{component}.{found}")
        if kept:
            config = config_cls(**{k: v for k, v in fields.items() if k in config_cls.__dataclass_fields__
                                   and k not in ("peft_type", "task_type", "revision")})
            config.target_modules = sorted({_module_of(k) for k in kept})  # exact names: no suffix matches
            adapter.configs[component] = config
            adapter.state_dicts[component] = kept
            adapter.rank = max(adapter.rank, int(config.r))
    extra = [k for k in lora.tensors if not k.startswith(tuple(f"{c}." for c in components))]
    adapter.unmatched.extend(extra)
    if not adapter.modules:
        raise LoraFileError(f"matches no layer of this model ({len(adapter.unmatched)} {kind} keys); it was made "
                            "for another model family", where=str(lora.path),
                            fix="Load it with the base model it was trained on.")
    if adapter.unmatched and not allow_partial:
        raise LoraFileError(f"has {len(adapter.unmatched)} keys that match no layer of this model "
                            f"({', '.join(adapter.unmatched[:3])}{', …' if len(adapter.unmatched) > 3 else ''})",
                            where=str(lora.path),
                            fix="Load it with the base model it was made for, or load the matching layers anyway "
                                "with allow_partial=True (CLI: --allow-partial).")
    return adapter


def inject_peft_adapter(pipe, adapter: PeftAdapter, name: str) -> None:
    """Add the adapter to each component under `name` and load its tensors; strict: every tensor must land."""
    from peft import set_peft_model_state_dict

    for component, config in adapter.configs.items():
        module = getattr(pipe, component)
        module.add_adapter(config, adapter_name=name)
        result = set_peft_model_state_dict(module, adapter.state_dicts[component], adapter_name=name)
        missing = [k for k in getattr(result, "missing_keys", []) if name in k and any(p in k for p in KINDS)]
        unexpected = list(getattr(result, "unexpected_keys", []))
        if missing or unexpected:
            raise LoraFileError(f"did not load into {component}: {len(missing)} {adapter.kind} tensors missing, "
                                f"{len(unexpected)} unexpected (e.g. {(missing + unexpected)[0]})",
                                where=name, fix="This is a bug in LoRA Studio's pool; please report it.")


def _adapter_metadata(lora) -> dict:
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY  # the key trainer/export.py writes

    raw = lora.metadata.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        raise LoraFileError(f"holds {lycoris_kind(lora.tensors)} tensors in peft keys but no adapter config "
                            f"(metadata {LORA_ADAPTER_METADATA_KEY!r})", where=str(lora.path),
                            fix="Load the .peft.safetensors file a LoRA Studio LoHa/LoKr run wrote.")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise LoraFileError(f"has unreadable adapter metadata ({err})", where=str(lora.path),
                            fix="Load the .peft.safetensors file a LoRA Studio run wrote, unchanged.") from err


def _module_of(key: str) -> str:
    """`down_blocks.0.….to_q.hada_w1_a` -> `down_blocks.0.….to_q`."""
    for prefix in KINDS:
        if f".{prefix}" in key:
            return key.split(f".{prefix}", 1)[0]
    return key.rsplit(".", 1)[0]


def _find_module(modules: dict, name: str) -> str | None:
    """The module's name in this model: as saved, or across transformers' CLIP layouts (`text_model.` or not)."""
    for candidate in (name, name.removeprefix("text_model."), f"text_model.{name}"):
        if candidate in modules:
            return candidate
    return None
