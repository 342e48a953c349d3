"""Extract a LoRA from two checkpoints: the SVD of their difference on the layers LoRA training targets.

    report = extract_lora("tuned.safetensors", "tiny", rank=16, out="tuned-lora.safetensors")

Both models load as `--base-model` does (a tiny name, a diffusers folder, a single file, a hub id) and must be
of one family and shape. For the UNet's attention projections (`network.target_modules`' defaults: to_q,
to_k, to_v, to_out.0), and for a text encoder's (q/k/v/out_proj) when that encoder differs by more than
`min_diff` anywhere (sd-scripts' rule and default: fine-tunes that froze it still differ by rounding), the
difference W_tuned - W_base is factored at `rank` (the best rank-r approximation) with alpha = rank, so
strength 1 applies the whole of what was kept. The file is kohya keys, named by the family.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.errors import ModelError
from trainer.lora_tools.lowrank import RankReport, factor, layer_tensors, write_kohya_lora

MIN_DIFF = 0.01


def extract_lora(tuned: str, base: str, rank: int, out: str | Path, min_diff: float = MIN_DIFF,
                 dtype: torch.dtype = torch.float32) -> RankReport:
    """Write `out`, the LoRA that takes `base` towards `tuned`; the report says how much of each difference
    the rank kept."""
    from trainer.config import ModelConfig
    from trainer.errors import StudioError
    from trainer.models.loading import load_base

    if rank < 1:
        raise StudioError(f"--rank must be at least 1, got {rank}", fix="Pick a rank such as 16, 32 or 64.")
    tuned_base = load_base(ModelConfig(base_model=tuned), dtype=torch.float32)
    base_base = load_base(ModelConfig(base_model=base), dtype=torch.float32)
    family = base_base.family
    if tuned_base.family is not family:
        raise ModelError(f"is an {tuned_base.family.label} model and {base} an {family.label} one; a LoRA needs "
                         "one family", where=tuned, fix="Extract against the base this model was tuned from.")
    report, tensors = RankReport(), {}
    for component in family.components:
        layers = _difference(getattr(tuned_base.pipe, component), getattr(base_base.pipe, component),
                             component, where=tuned)
        if component != "unet" and max((d.abs().max().item() for d in layers.values()), default=0.0) <= min_diff:
            continue  # this text encoder was not trained: a LoRA of its rounding noise would only add noise
        for module, delta in layers.items():
            up, down, singular, keep = factor(delta, rank)
            stem = (family.kohya_unet_key(module, base_base.pipe.unet.config) if component == "unet"
                    else family.kohya_text_key(component, module))
            report.add(stem, singular, keep, 1.0, int(singular.numel()))
            tensors.update(layer_tensors(stem, up, down, keep, dtype=dtype))
    write_kohya_lora(out, tensors, _metadata(base_base, tuned, rank, report, Path(out)))
    return report


def _difference(tuned: torch.nn.Module, base: torch.nn.Module, component: str,
                where: str) -> dict[str, torch.Tensor]:
    """W_tuned - W_base of every LoRA target layer of one component, by module name."""
    from trainer.config import LORA_TARGETS
    from trainer.network import TEXT_ENCODER_TARGETS

    targets = tuple(LORA_TARGETS if component == "unet" else TEXT_ENCODER_TARGETS)
    theirs = dict(base.named_modules())
    out = {}
    for name, module in tuned.named_modules():
        if not isinstance(module, torch.nn.Linear) or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        other = theirs.get(name)
        if not isinstance(other, torch.nn.Linear) or other.weight.shape != module.weight.shape:
            raise ModelError(f"has {component}.{name} of shape {tuple(module.weight.shape)}, which the base model "
                             "lacks or holds in another shape", where=where,
                             fix="Extract against the base this model was tuned from (same family and size).")
        out[name] = module.weight.detach().float() - other.weight.detach().float()
    return out


def _metadata(base, tuned: str, rank: int, report: RankReport, out: Path) -> dict[str, str]:
    import json

    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        **base.family.metadata(base.prediction_type),
        "ss_output_name": out.name.removesuffix(".safetensors"),
        "ss_sd_model_name": base.source,
        "ss_training_comment": f"extracted by lora-studio extract from {tuned} against {base.source} at rank "
                               f"{rank} (kept {report.overall:.2%} of the difference)",
        "lora_studio_base_model": base.source,
        "lora_studio_family": base.family.name,
        "lora_studio_prediction_type": base.prediction_type,
        "lora_studio_extracted": json.dumps({"tuned": tuned, "base": base.source, "rank": rank,
                                             "kept": round(report.overall, 6)}),
    }
