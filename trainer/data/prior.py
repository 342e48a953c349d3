"""Prior preservation, the data side: where the class (regularization) images are, and the doctor's look at them.

    folder = class_folder(config, workdir)           # data.class_dir, or the generated images' cache folder
    report = class_report(config, train_samples=12)  # a Report of its own (None when prior preservation is off)
    order = class_order(class_items, 12, seed=42)    # which class item fills each of the epoch's 12 class places

Like kohya's sd-scripts, class images are examples in the same epoch stream as the training images, each with
the loss weight `train.prior_loss_weight`, and each epoch trains as many class samples (repeats counted) as
training samples: fewer class images are cycled, extra ones are left out (the doctor says so). Generated class
images (`data.class_prompt` x `data.num_class_images`) live in a folder keyed by everything that changes them,
under `data.cache_dir` (shared by later runs) or else the run folder; `manifest.json` is written last, so a
folder counts only when complete (trainer/prior.py generates them). This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

from trainer.data.captions import has_trigger
from trainer.data.scan import DatasetItem

MANIFEST = "manifest.json"
GUIDANCE = 7.5
"""Classifier-free guidance of generated class images: the pipelines' default, as diffusers' DreamBooth script."""
GENERATION_VERSION = 1
"""Bump when the code that draws class images changes: every cached class folder is then drawn again."""


def enabled(config) -> bool:
    """True when the run trains with class images (a folder, or generated ones)."""
    return bool(config.data.class_dir.strip()) or config.data.num_class_images > 0


def generated(config) -> bool:
    return config.data.num_class_images > 0 and not config.data.class_dir.strip()


def generation_settings(config, resolution: int) -> dict:
    """Everything in the config that changes the generated class images (the model's weights are checked apart,
    through the identity in the manifest)."""
    model, data = config.model, config.data
    return {"base_model": model.base_model, "base_config": model.base_config, "quantize": model.quantize,
            "prediction_type": model.prediction_type, "zero_terminal_snr": model.zero_terminal_snr,
            "prompt": data.class_prompt, "count": data.num_class_images, "resolution": resolution,
            "seed": data.class_seed, "steps": data.class_steps, "guidance": GUIDANCE, "version": GENERATION_VERSION}


def class_folder(config, workdir: str | Path | None = None, resolution: int | None = None) -> Path:
    """The class images' folder: `data.class_dir`, or `<cache_dir or workdir>/class_images/<prompt>-<key>`."""
    data = config.data
    if data.class_dir.strip():
        return Path(data.class_dir).expanduser()
    resolution = resolution or _resolution(config)
    blob = json.dumps(generation_settings(config, resolution), sort_keys=True).encode()
    slug = re.sub(r"[^a-z0-9]+", "-", data.class_prompt.lower()).strip("-")[:40] or "class"
    root = Path(data.cache_dir).expanduser() if data.cache_dir else Path(workdir or config.export.output_dir)
    return root / "class_images" / f"{slug}-{hashlib.sha256(blob).hexdigest()[:16]}"


def read_manifest(folder: Path) -> dict | None:
    """The complete generated folder's manifest, or None (missing, half-written or unreadable)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) and (folder / f).is_file() for f in files):
        return None
    return manifest


def class_config(config):
    """The config the class images are read with: no trigger word (class captions describe the class, not your
    subject), `data.class_prompt` for images without a caption, and no validation split."""
    data = dataclasses.replace(config.data, trigger_word="", default_caption=config.data.class_prompt,
                               validation_fraction=0.0, validation_dir="")
    return dataclasses.replace(config, data=data)


def class_report(config, train_samples: int | None = None, workdir: str | Path | None = None,
                 tokenizer="auto"):
    """The doctor's report on the class images (None when prior preservation is off).

    A class folder is checked like a dataset; generated images are checked once the cache holds them, and before
    that the report says they will be drawn. `train_samples` (training images x repeats) adds the matching note.
    """
    from trainer.data.doctor import Report, doctor

    if not enabled(config):
        return None
    folder = class_folder(config, workdir)
    if generated(config) and read_manifest(folder) is None:
        report = Report(root=folder)
        report.add("note", "class-images-to-generate", folder,
                   f"will hold {config.data.num_class_images} class images drawn from the base model with "
                   f"{config.data.class_prompt!r} at the start of the run ({config.data.class_steps} steps each), "
                   "reused by later runs with the same settings")
        report.summary = {"images": 0, "to_generate": config.data.num_class_images}
        return report
    report = doctor(folder, class_config(config), tokenizer=tokenizer)
    for finding in report.findings:  # a class image without a caption falls back on the class prompt
        finding.fix = finding.fix.replace("data.default_caption", "data.class_prompt")
    _check_class_captions(report, config.data.trigger_word)
    _note_matching(report, train_samples)
    return report


def _check_class_captions(report, trigger: str) -> None:
    trigger = trigger.strip()
    if not trigger:
        return
    for item in report.items:
        if has_trigger(item.caption, trigger):
            report.add("warning", "class-has-trigger", item.caption_path or item.image_path,
                       f"is a class caption with the trigger word {trigger!r}: class images should show the class "
                       "without your subject", "Remove the trigger word from the class captions.")


def _note_matching(report, train_samples: int | None) -> None:
    samples = sum(item.repeats for item in report.items)
    report.summary["class_samples"] = samples
    if not train_samples or not samples:
        return
    report.summary["class_samples_per_epoch"] = train_samples
    if samples > train_samples:
        report.add("warning", "class-images-unused", report.root,
                   f"has {samples} class samples (images x repeats) for {train_samples} training samples; each "
                   f"epoch trains the same {train_samples} of them, so {samples - train_samples} go unused",
                   "Add training images or repeats, or use fewer class images.")
    elif samples < train_samples:
        report.add("note", "class-images-cycled", report.root,
                   f"has {samples} class samples for {train_samples} training samples: they are repeated to "
                   f"{train_samples} per epoch")


def class_order(items: list[DatasetItem], train_samples: int, seed: int) -> list[int]:
    """The class item (index into `items`) at each of the epoch's `train_samples` class places.

    The same every epoch (so every epoch has the same batches per bucket and resuming lands on the same step):
    each item counted `repeats` times in file order, shuffled once by `seed`, then cycled or cut to length.
    """
    if not items or train_samples <= 0:
        return []
    ordered = sorted(range(len(items)), key=lambda i: str(items[i].image_path))
    slots = [i for i in ordered for _ in range(items[i].repeats)]
    random.Random(seed).shuffle(slots)
    return [slots[k % len(slots)] for k in range(train_samples)]


def _resolution(config) -> int:
    from trainer.data.doctor import default_resolution

    return config.data.resolution or default_resolution(config.model)
