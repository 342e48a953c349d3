"""What kind of network a LoRA file holds, so the tools can refuse the kinds they would get wrong.

    require_plain_lora(read_lora_file(path), "resize")   # LoraFileError naming the kind for LoHa, LoKr, DoRA…

The tools work on a plain low-rank pair per layer (`up @ down`, scaled by alpha / rank). LoHa (Hadamard
products), LoKr (Kronecker products), DoRA (a magnitude vector beside the pair), Tucker-decomposed convolutions
(`lora_mid`) and full-weight diffs have other algebra: merging or truncating them as plain LoRA would silently
give another model, so they are refused with their name.
"""

from __future__ import annotations

from trainer.errors import LoraFileError

# (what marks a key, the kind's name): a key is of a kind when it holds the mark (marks start at a name boundary,
# so a module name such as `soft_proj` or `diffusion` is no mark).
_MARKERS = (
    (".hada_w", "LoHa (LyCORIS)"),
    (".lokr_w", "LoKr (LyCORIS)"),
    (".dora_scale", "DoRA"),
    (".lora_magnitude_vector", "DoRA"),
    (".lora_mid.", "LoRA with Tucker-decomposed convolutions (LyCORIS `lora_mid`)"),
    (".lora_E", "AdaLoRA (PEFT, not yet exported as plain LoRA)"),
    (".oft_", "OFT"),
)
_FULL_DIFF = (".diff", ".diff_b")


def lora_kind(keys) -> str:
    """`lora` for a plain LoRA, else the name of the network type its keys show."""
    for key in keys:
        for marker, kind in _MARKERS:
            if marker in key:
                return kind
        if key.endswith(_FULL_DIFF):
            return "full weight difference (LyCORIS `full`)"
    return "lora"


def require_plain_lora(lora, command: str) -> None:
    """Refuse a file (a `LoraFile`) that holds anything but plain LoRA pairs, naming its kind and the fix."""
    kind = lora_kind(lora.tensors)
    if kind != "lora":
        raise LoraFileError(f"is a {kind} file; `lora-studio {command}` works on plain LoRA (lora_down/lora_up "
                            "pairs) only, and treating this kind as one would give a different model",
                            where=str(lora.path),
                            fix="Use a plain LoRA file, or the tools of the trainer that made this one (LyCORIS "
                                "ships its own merge and extract scripts).")
