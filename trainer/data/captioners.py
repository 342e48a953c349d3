"""Load an image captioner by hub id or local folder: a BLIP-style image-to-text model or a WD14-style tagger.

    captioner = load_captioner("Salesforce/blip-image-captioning-base")       # sentences
    captioner = load_captioner("models/my-tagger", threshold=0.35)             # comma-separated tags
    captioner(images)  # -> ["a red square on a white background", ...]

Two kinds, told apart by the model's `config.json` (`kind="auto"`) or named by the caller:
- **captioner**: any transformers image-to-text model with a processor (`AutoModelForImageTextToText`, which
  covers BLIP, BLIP-2 and GIT), decoded with `generate`. Florence-2 needs `trust_remote_code`, which is never
  passed: remote code from a hub repository does not run here.
- **tagger**: a transformers image classifier (`AutoModelForImageClassification`, e.g. ViT, ConvNeXt, SwinV2)
  trained multi-label; every tag whose sigmoid score reaches `threshold` is kept, best first. The tag names come
  from a WD14-style `selected_tags.csv` beside the weights (columns `tag_id,name,category,count`; category 9,
  the ratings, is left out), else from the config's `id2label`. The original WD14 taggers ship as ONNX/timm
  files; a repository converted to transformers' format (config.json + model.safetensors + preprocessor) with
  its `selected_tags.csv` loads here. Underscores in tags become spaces (kohya's `--remove_underscore`),
  except in short emoticons such as `^_^`.

Hub ids go through the normal Hugging Face cache: with `HF_HUB_OFFLINE=1` a model that is not cached is
refused with a message that says how to get it, and only safetensors weights are read.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import ModelError

KINDS = ("auto", "captioner", "tagger")
TAGS_FILE = "selected_tags.csv"
RATING_CATEGORY = "9"
DEFAULT_THRESHOLD = 0.35
"""WD14's usual cut-off for general tags."""


class Captioner:
    """Callable: a list of RGB PIL images in, one caption per image out."""

    def __init__(self, kind: str, source: str, run: Callable[[list[Any]], list[str]]):
        self.kind = kind
        self.source = source
        self._run = run

    def __call__(self, images: list[Any]) -> list[str]:
        return self._run(images)


def load_captioner(source: str, kind: str = "auto", device: str = "cpu", threshold: float = DEFAULT_THRESHOLD,
                   max_new_tokens: int = 40) -> Captioner:
    """The captioner or tagger at `source` (hub id or folder) on `device`; ModelError says what to do."""
    if kind not in KINDS:
        raise ModelError(f"is not a captioner kind (use one of {', '.join(KINDS)})", where=repr(kind))
    if not 0 < threshold < 1:
        raise ModelError(f"is not a usable tag threshold (between 0 and 1, like {DEFAULT_THRESHOLD})",
                         where=str(threshold))
    source = _check_source(source)
    config = _load(source, lambda: _auto("AutoConfig").from_pretrained(source))
    if kind == "auto":
        archs = " ".join(getattr(config, "architectures", None) or [])
        kind = "tagger" if "ForImageClassification" in archs else "captioner"
    if kind == "tagger":
        return _tagger(source, config, device, threshold)
    return _image_to_text(source, device, max_new_tokens)


def _check_source(source: str) -> str:
    source = (source or "").strip()
    if not source:
        raise ModelError("no captioning model was given", fix="Name a hub id such as "
                         "Salesforce/blip-image-captioning-base, or a local model folder.")
    path = Path(source).expanduser()
    looks_local = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if path.exists():
        return str(path)
    if looks_local:
        raise ModelError("does not exist", where=source, fix="Check the folder, or give a hub id (org/name).")
    return source


def _auto(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _load(source: str, fn: Callable[[], Any]) -> Any:
    """Run a `from_pretrained`, turning the hub's and transformers' errors into a ModelError with a fix."""
    from huggingface_hub import constants

    try:
        return fn()
    except (OSError, ValueError, KeyError) as err:
        if Path(source).exists():
            raise ModelError(f"is not a usable captioning model ({err})", where=source,
                             fix="Point at a folder saved with save_pretrained (config.json, model.safetensors "
                                 "and the processor files).") from err
        offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "it could not be downloaded"
        raise ModelError(f"could not be loaded: it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                         f"or not a captioning model, and {offline} ({type(err).__name__})", where=source,
                         fix=f"Download it once with network (`hf download {source}`), or give a local folder.") \
            from err


def _image_to_text(source: str, device: str, max_new_tokens: int) -> Captioner:
    import torch

    processor = _load(source, lambda: _auto("AutoProcessor").from_pretrained(source))
    model = _load(source, lambda: _auto("AutoModelForImageTextToText").from_pretrained(source, use_safetensors=True))
    model.to(device).eval()

    def run(images: list[Any]) -> list[str]:
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        return [" ".join(text.split()) for text in processor.batch_decode(out, skip_special_tokens=True)]

    return Captioner("captioner", source, run)


def _tagger(source: str, config: Any, device: str, threshold: float) -> Captioner:
    import torch

    processor = _load(source, lambda: _auto("AutoImageProcessor").from_pretrained(source))
    model = _load(source, lambda: _auto("AutoModelForImageClassification").from_pretrained(
        source, use_safetensors=True))
    model.to(device).eval()
    names, keep = _tag_names(source, config)

    def run(images: list[Any]) -> list[str]:
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.inference_mode():
            scores = torch.sigmoid(model(**inputs).logits.float()).cpu()
        captions = []
        for row in scores:
            order = sorted(range(len(names)), key=lambda i: -float(row[i]))
            captions.append(", ".join(names[i] for i in order if keep[i] and float(row[i]) >= threshold))
        return captions

    return Captioner("tagger", source, run)


def _tag_names(source: str, config: Any) -> tuple[list[str], list[bool]]:
    """Tag name and whether to keep it (ratings are not tags), per output of the classifier."""
    count = int(config.num_labels)
    table = _tags_csv(source)
    if table is not None:
        if len(table) != count:
            raise ModelError(f"lists {len(table)} tags but the model has {count} outputs", where=TAGS_FILE,
                             fix="Use the selected_tags.csv that came with these weights.")
        return [_tidy(name) for name, _ in table], [category != RATING_CATEGORY for _, category in table]
    labels = getattr(config, "id2label", None) or {}
    return [_tidy(str(labels.get(i, f"tag {i}"))) for i in range(count)], [True] * count


def _tags_csv(source: str) -> list[tuple[str, str]] | None:
    path = Path(source) / TAGS_FILE
    if not path.exists() and not Path(source).exists():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(source, TAGS_FILE))
        except Exception:  # noqa: BLE001 - the file is optional; id2label is the fallback
            return None
    if not path.exists():
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        return [(row["name"], str(row.get("category", "0"))) for row in csv.DictReader(handle)]


def _tidy(tag: str) -> str:
    return tag.replace("_", " ") if len(tag) > 3 else tag
