"""Resize a LoRA to a lower rank by SVD of each layer's update, keeping its scale.

    report = resize_lora("ink.safetensors", rank=4, out="ink-r4.safetensors")
    print(report.summary())        # kept 91.30% of the update (Frobenius norm) over 128 layers; per layer …

Each layer's update (alpha / r) * up @ down is factored again at the new rank k (the best rank-k
approximation, Eckart-Young); its alpha becomes alpha * k / r, so alpha / rank and the file's strengths mean
what they meant. A layer already at rank <= k is rewritten unchanged in value. As sd-scripts'
`networks/resize_lora.py` does, the report gives the share of each update's Frobenius norm that is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.lora_tools.kinds import require_plain_lora
from trainer.lora_tools.lowrank import RankReport, factor_pair, flat, kohya_layers, layer_tensors, write_kohya_lora


def resize_lora(path: str | Path, rank: int, out: str | Path, share: float | None = None) -> RankReport:
    """Write `out`: the LoRA at `path` with every layer at rank `rank` or below; returns what was kept.

    With `share` (0-1], each layer takes the smallest rank that keeps that share of its update's Frobenius norm,
    capped at `rank` (sd-scripts' `--dynamic_method sv_fro`)."""
    from trainer.errors import StudioError
    from trainer.generate.lorafile import read_lora_file

    if rank < 1:
        raise StudioError(f"--rank must be at least 1, got {rank}", fix="Pick a rank such as 4, 8 or 16.")
    if share is not None and not 0 < share <= 1:
        raise StudioError(f"--keep must be a share in (0, 1], got {share}", fix="For example --keep 0.95.")
    lora = read_lora_file(path, for_preview=False)
    require_plain_lora(lora, "resize")
    layers = kohya_layers(lora)
    report = RankReport()
    tensors = {}
    for stem, layer in layers.items():
        up, down, singular, keep = factor_pair(flat(layer.up), flat(layer.down), rank, share)
        report.add(stem, singular, keep, layer.scale, layer.rank)
        tensors.update(layer_tensors(stem, up, down, layer.scale * keep, like=layer, dtype=layer.down.dtype))
    alphas = {float(t) for k, t in tensors.items() if k.endswith(".alpha")}
    write_kohya_lora(out, tensors, _metadata(lora.metadata, report, Path(out), rank, alphas, share))
    return report


def _metadata(source: dict[str, str], report: RankReport, out: Path, rank: int, alphas: set[float],
              share: float | None) -> dict[str, str]:
    """The input's metadata (base model, family, training config) with the new rank and what was kept."""
    before = max(b for b, _ in report.ranks.values())
    after = max(a for _, a in report.ranks.values())
    meta = dict(source)
    meta.update({
        "ss_network_dim": str(after),
        "ss_output_name": out.name.removesuffix(".safetensors"),
        "ss_training_comment": f"rank resized from {before} to {after} by lora-studio resize "
                               f"(kept {report.overall:.2%} of the update)",
        "lora_studio_resized": json.dumps({"from_rank": before, "rank": rank, "keep": share,
                                           "kept": round(report.overall, 6)}),
    })
    # alpha scaled with the rank (alpha / rank stays); kohya front-ends show this figure ("Dynamic" as sd-scripts
    # writes when layers differ)
    meta["ss_network_alpha"] = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    meta.pop("lora_studio_config_hash", None)  # the file no longer holds what that config trained
    return meta
