"""Read a LoRA file safely and match it against a pipeline before anything touches the model.

    lora = read_lora_file("style.safetensors")          # LoraFileError for anything that is not a sound file
    plan = plan_lora(pipe, lora)                         # LoraFileError when it does not fit this model,
                                                         # or when any key matches no layer of it
    plan = plan_lora(pipe, lora, allow_partial=True)     # load what fits; plan.unmatched lists the rest

Both kohya/A1111 keys (`lora_unet_…`, `lora_te_…`, `.alpha`) and diffusers/PEFT keys (`unet.….lora_A.weight`,
`unet.….lora.down.weight`) are read; diffusers' own converters turn them into one form (SDXL's sd-scripts names,
`lora_unet_input_blocks_4_1_…`, are mapped with the UNet's config, as `load_lora_weights` does). The model
family says which components a file may hold (`unet`, `text_encoder`, and `text_encoder_2` on SDXL). Only
safetensors is ever opened: a pickle is refused by its first bytes, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import LoraFileError
from trainer.generate.peftfile import lycoris_kind

MAX_HEADER_BYTES = 100 * 1024 * 1024
_DIFFUSERS_PARTS = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_linear_layer")
_REFETCH = "Download or copy the file again; if it is not a LoRA, pick the right file."


@dataclass
class LoraFile:
    """A LoRA file whose header and tensors were read and checked."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    format: str
    """`kohya` (A1111 keys), `diffusers` (diffusers/PEFT keys) or `peft-loha`/`peft-lokr` (peft's LyCORIS
    layers, loaded by trainer/generate/peftfile.py)."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class LoraPlan:
    """What of a LoRA file fits a pipeline: the state dict to load and what was left out."""

    state_dict: dict[str, torch.Tensor]
    """Diffusers-form keys (`unet.…`, `text_encoder.…`), only those that match a layer."""
    network_alphas: dict[str, float] | None
    adapter_metadata: dict | None
    modules: set[str] = field(default_factory=set)
    """Matched layers as `component.module.path`."""
    unmatched: list[str] = field(default_factory=list)
    """Keys of the file that match no layer of this model (only with allow_partial; they are not loaded)."""
    rank: int = 0
    source: str = ""
    """The file the plan was made from (for error messages)."""

    @property
    def has_text_encoder(self) -> bool:
        return any(not m.startswith("unet.") for m in self.modules)

    def component(self, name: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict.items() if k.startswith(f"{name}.")}


def read_lora_file(path: str | Path, for_preview: bool = True) -> LoraFile:
    """Check the safetensors framing by hand (length, header, offsets), then load the tensors.

    `for_preview` refuses the kinds the Generate tab cannot apply (LyCORIS, kohya DoRA); the LoRA tools pass
    False and refuse every non-plain kind with their own message (trainer/lora_tools/kinds.py)."""
    path = Path(path)
    header = _read_header(path)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types; all mean "unreadable"
        raise LoraFileError(f"could not be read as safetensors ({err})", where=str(path),
                            fix=_REFETCH) from err
    metadata = header.get("__metadata__") or {}
    keys = list(tensors)
    if not keys:
        raise LoraFileError("holds no tensors", where=str(path), fix=_REFETCH)
    lycoris = lycoris_kind(keys)
    kohya_keys = all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)
    if lycoris and not kohya_keys:  # LoRA Studio's PEFT twin of a LoHa/LoKr run: the pool loads it with peft
        return LoraFile(path=path, tensors=tensors, metadata=dict(metadata), format=f"peft-{lycoris.lower()}")
    if lycoris and for_preview:
        twin = path.name.removesuffix(".safetensors") + ".peft.safetensors"
        raise LoraFileError(f"is a LyCORIS {lycoris} file in kohya keys, which diffusers' LoRA loader cannot "
                            "read", where=str(path),
                            fix=f"Load the run's PEFT file ({twin}) here; this file is for AUTOMATIC1111, "
                                "Forge and ComfyUI.")
    if kohya_keys:
        fmt = "kohya"
        if for_preview and any(k.endswith(".dora_scale") for k in keys):
            raise LoraFileError("is a kohya DoRA file; diffusers drops its `dora_scale` and would preview the "
                                "LoRA part alone", where=str(path),
                                fix="Load the run's <name>.peft.safetensors instead (diffusers reads its DoRA).")
    elif any(part in k for k in keys for part in _DIFFUSERS_PARTS):
        fmt = "diffusers"
    else:
        raise LoraFileError(f"holds no LoRA weights (its first keys: {', '.join(sorted(keys)[:3])})",
                            where=str(path), fix="Pick a LoRA file (kohya/A1111 or diffusers/PEFT keys).")
    return LoraFile(path=path, tensors=tensors, metadata=dict(metadata), format=fmt)


def _read_header(path: Path) -> dict:
    if not path.is_file():
        raise LoraFileError("does not exist", where=str(path), fix="Check the path.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
        if _is_pickle(head, size):
            raise LoraFileError("is a PyTorch pickle (.ckpt/.pt), not safetensors; pickles can run code "
                                "and are never loaded", where=str(path),
                                fix="Convert it to .safetensors with a tool you trust, or get a safetensors "
                                    "release.")
        if len(head) < 8:
            raise LoraFileError(f"is not a safetensors file (only {size} bytes)", where=str(path),
                                fix=_REFETCH)
        length = int.from_bytes(head[:8], "little")
        if length > size - 8 or length > MAX_HEADER_BYTES:
            raise LoraFileError(f"is not a complete safetensors file: its header claims {length} bytes but "
                                f"the file holds only {size - 8} after the length field (truncated or not "
                                "safetensors)", where=str(path), fix=_REFETCH)
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoraFileError("is not a safetensors file (its header is not JSON)", where=str(path),
                            fix=_REFETCH) from err
    if not isinstance(header, dict):
        raise LoraFileError("is not a safetensors file (its header is not a table)", where=str(path),
                            fix=_REFETCH)
    ends = [info["data_offsets"][1] for key, info in header.items()
            if key != "__metadata__" and isinstance(info, dict) and "data_offsets" in info]
    data_size = size - 8 - length
    if ends and max(ends) > data_size:
        raise LoraFileError(f"is truncated: its header describes {max(ends)} bytes of tensors but only "
                            f"{data_size} are there", where=str(path), fix=_REFETCH)
    return header


def _is_pickle(head: bytes, size: int) -> bool:
    """True for a torch zip archive or a raw pickle; never for a safetensors file.

    A safetensors file is an 8-byte little-endian header length and then the JSON header, which starts
    with `{`: that byte decides. The length's own first byte may be anything (0x80 for 1 in 256 lengths),
    so a pickle is recognised by what it is: a zip's local-file signature, or the PROTO opcode with a
    protocol 2-5 — and only when byte 8 is not the start of a plausible safetensors header.
    """
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def plan_lora(pipe, lora: LoraFile, allow_partial: bool = False) -> LoraPlan:
    """Convert the keys with diffusers, match each to a layer of the family's components, and refuse a file that
    does not fit, or (unless `allow_partial`) one with any key that matches no layer."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    from trainer.models.families import family_for_pipeline

    try:
        state_dict, alphas = type(pipe).lora_state_dict(dict(lora.tensors), unet_config=pipe.unet.config)
    except (ValueError, KeyError) as err:
        raise LoraFileError(f"has keys that are not LoRA layers diffusers can read "
                            f"({str(err).strip()[:300]})", where=str(lora.path),
                            fix="Use a LoRA (not LyCORIS/LoHa/LoKr) file.") from err
    raw_meta = lora.metadata.get(LORA_ADAPTER_METADATA_KEY)
    adapter_metadata = json.loads(raw_meta) if raw_meta else None
    plan = LoraPlan(state_dict={}, network_alphas=alphas or None, adapter_metadata=adapter_metadata,
                    source=str(lora.path))
    components = [c for c in family_for_pipeline(pipe).components if getattr(pipe, c, None) is not None]
    modules = {name: dict(getattr(pipe, name).named_modules()) for name in components}
    misfits: list[str] = []
    names = _peft_names(pipe, components, list(state_dict))
    for key, tensor in state_dict.items():
        component, module_name, part = names.get(key, ("", "", ""))
        module = modules.get(component, {}).get(module_name)
        if module is None:
            plan.unmatched.append(key)
            continue
        problem = _misfit(module, part, tensor)
        if problem:
            misfits.append(f"{component}.{module_name} {problem}")
            continue
        plan.state_dict[key] = tensor
        plan.modules.add(f"{component}.{module_name}")
        if part == "lora_B" and tensor.ndim >= 2:
            plan.rank = max(plan.rank, int(tensor.shape[1]))
    plan.unmatched.extend(_dropped_by_converter(lora, state_dict))
    _refuse_misfits(lora, plan, misfits)
    if plan.unmatched and not allow_partial:
        raise LoraFileError(f"has {len(plan.unmatched)} keys that match no layer of this model "
                            f"({', '.join(plan.unmatched[:3])}{', …' if len(plan.unmatched) > 3 else ''}); "
                            f"its other {len(plan.modules)} layers would preview a different LoRA than the file "
                            "holds", where=str(lora.path),
                            fix="Load it with the base model it was made for, or load the matching layers anyway "
                                "with allow_partial=True (CLI: --allow-partial).")
    return plan


def _dropped_by_converter(lora: LoraFile, converted: dict) -> list[str]:
    """Keys diffusers' converter left out without saying so (it filters `dora_scale`, and drops sd-scripts
    block names from a file that mixes them with diffusers names): each key but `.alpha` yields one tensor."""
    weights = [k for k in lora.tensors if not k.endswith(".alpha")]
    missing = len(weights) - len(converted)
    if missing <= 0:
        return []
    dora = [k for k in weights if "dora_scale" in k]
    named = dora[:missing]
    return named + [f"<{missing - len(named)} more keys diffusers' converter dropped>"] * (missing > len(named))


def _refuse_misfits(lora: LoraFile, plan: LoraPlan, misfits: list[str]) -> None:
    made_for = lora.metadata.get("ss_base_model_version")
    hint = f" (the file says it was made for {made_for})" if made_for else ""
    fix = "Load it with the base model it was trained on."
    if misfits:
        raise LoraFileError(f"does not fit this model: {len(misfits)} layers have other sizes, e.g. "
                            f"{misfits[0]}; it was made for another model family or size{hint}",
                            where=str(lora.path), fix=fix)
    if not plan.state_dict:
        example = plan.unmatched[0] if plan.unmatched else "none"
        raise LoraFileError(f"matches no layer of this model ({len(plan.unmatched)} keys, e.g. {example}); "
                            f"it was made for another model family{hint}", where=str(lora.path), fix=fix)


def _peft_names(pipe, components: list[str], keys: list[str]) -> dict[str, tuple[str, str, str]]:
    """`unet.a.b.to_q.lora.down.weight` -> (`unet`, `a.b.to_q`, `lora_A`), by diffusers' own converters.

    The converters only rename keys, so each key goes in with its index as the value and is found again by it.
    """
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    names: dict[str, tuple[str, str, str]] = {}
    for component in components:
        prefix = f"{component}."
        part = {k.removeprefix(prefix): i for i, k in enumerate(keys) if k.startswith(prefix)}
        if not part:
            continue
        if component == components[0]:  # the denoiser
            converted = part if any("lora_A" in k for k in part) else convert_unet_state_dict_to_peft(part)
        else:
            converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
            if not hasattr(getattr(pipe, component), "text_model"):  # transformers >= 5.6 flattened CLIP
                converted = {k.removeprefix("text_model."): i for k, i in converted.items()}
        for peft_key, index in converted.items():
            module, layer_part = peft_key, ""
            for marker in ("lora_A", "lora_B", "lora_magnitude_vector"):
                if f".{marker}" in peft_key:
                    module, layer_part = peft_key.split(f".{marker}")[0], marker
                    break
            names[keys[index]] = (component, module, layer_part)
    return names


def _misfit(module: torch.nn.Module, part: str, tensor: torch.Tensor) -> str:
    """Why `tensor` cannot be the `part` of a LoRA on `module` ("" when it fits)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if isinstance(base, torch.nn.Linear):
        size_in, size_out = base.in_features, base.out_features
    elif isinstance(base, torch.nn.Conv2d):
        size_in, size_out = base.in_channels, base.out_channels
    else:
        return f"is a {type(base).__name__}, which takes no LoRA"
    if part == "lora_A" and tensor.shape[1] != size_in:
        return f"takes {size_in} inputs, the file has {tensor.shape[1]}"
    if part == "lora_B" and tensor.shape[0] != size_out:
        return f"gives {size_out} outputs, the file has {tensor.shape[0]}"
    return ""
