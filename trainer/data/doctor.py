"""The dataset doctor: every problem with a dataset, found before any training starts.

    report = doctor("datasets/cats", config)          # config: a TrainConfig
    print(report.format()); report.ok                 # errors stop a run; warnings do not
    items = check_dataset(config)                     # the usable items, or DatasetRefused with the report

Per file it finds unreadable, truncated, unsupported and oversized images, images smaller than the
training size, exact and near duplicates, missing, empty, unreadable and over-long captions, and captions
without the trigger word, and loss masks (`01.mask.png`) that are unreadable, of another size than their
image, black everywhere or without an image. The summary gives images, repeats, samples and steps per epoch,
the bucket histogram and the masks. With `data.skip_bad_images` the refused images are dropped and listed
instead of stopping the run.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.buckets import assign_buckets, batches_per_epoch, bucket_histogram
from trainer.data.captions import add_trigger, caption_mode, has_trigger
from trainer.data.images import read_image
from trainer.data.masks import MASK_SUFFIX, check_mask, mask_summary
from trainer.data.scan import DatasetItem, ScanResult, scan_folder
from trainer.data.similar import image_signature, near_duplicates
from trainer.errors import DatasetError

LEVELS = ("error", "warning", "note")


@dataclass
class Finding:
    """One line of the report: how bad, which check, which file, what is wrong and the fix."""

    level: str
    code: str
    path: str
    message: str
    fix: str = ""


@dataclass
class Report:
    root: Path
    findings: list[Finding] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    items: list[DatasetItem] = field(default_factory=list)
    """The images training will use (bad ones removed when skipping)."""
    skipped: list[Path] = field(default_factory=list)
    """Files dropped because of `data.skip_bad_images`."""
    class_images: Report | None = None
    """Prior preservation: the class images' own report (trainer/data/prior.py); its errors refuse the run too."""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors and (self.class_images is None or self.class_images.ok)

    def add(self, level: str, code: str, path: str | Path, message: str, fix: str = "") -> None:
        self.findings.append(Finding(level, code, str(path), message, fix))

    def to_dict(self) -> dict:
        return {"root": str(self.root), "ok": self.ok, "summary": self.summary,
                "findings": [vars(f) for f in self.findings], "skipped": [str(p) for p in self.skipped],
                **({"class_images": self.class_images.to_dict()} if self.class_images is not None else {})}

    def format(self, limit: int = 20) -> str:
        """The report as text: errors, then warnings, then notes, then the summary."""
        from trainer.data.report_text import format_report

        return format_report(self, limit)


class DatasetRefused(DatasetError):
    """The doctor found errors; `.report` holds the full report, which is also the message."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(f"cannot be trained as it is:\n{report.format()}", where=str(report.root),
                         fix="Fix the errors above, or drop bad images with data.skip_bad_images "
                             "(--skip-bad-images).")


def doctor(path: str | Path | None = None, config=None, tokenizer="auto",
           resolution: int | None = None) -> Report:
    """Check the dataset at `path` (default `config.data.path`) against `config` (default settings).

    `tokenizer` counts caption tokens: "auto" loads the base model's, None skips the length check.
    `resolution` overrides the config's (0 there means the model's own).
    """
    from trainer.config import TrainConfig

    config = config or TrainConfig()
    data = config.data
    root = Path(path if path is not None else data.path)
    report = Report(root=root)
    try:
        found = scan_folder(root, data.caption_extension, data.default_caption or data.trigger_word)
    except DatasetError as err:
        report.add("error", "no-dataset", err.where or root, err.what, err.fix or "")
        return report
    resolution = resolution or data.resolution or _model_resolution(config.model, report)
    sizes = _check_images(found, report, data, resolution)
    _check_duplicates(report, sizes)
    if isinstance(tokenizer, str) and tokenizer == "auto":
        tokenizer = load_tokenizer(config.model, report)
    _check_captions(found, report, data, tokenizer)
    _check_files(found, report, data.skip_bad_images)
    usable_sizes = {i.image_path: sizes[i.image_path][0] for i in report.items}
    _summarise(report, config, resolution, usable_sizes, tokenizer)
    if not report.items and found.items:
        report.add("error", "no-usable-images", root, "has no usable images left after skipping bad ones",
                   "Replace the refused images with readable PNG, JPEG or WebP files.")
    return report


def check_dataset(config, tokenizer="auto",
                  resolution: int | None = None) -> tuple[list[DatasetItem], Report]:
    """Run the doctor on `config.data.path`; return (usable items, report) or raise DatasetRefused."""
    report = with_class_images(doctor(None, config, tokenizer=tokenizer, resolution=resolution), config)
    if not report.ok:
        raise DatasetRefused(report)
    return report.items, report


def with_class_images(report: Report, config, tokenizer="auto") -> Report:
    """`report` with the class (prior-preservation) images' own report attached, when the config uses them."""
    from trainer.data.prior import class_report

    report.class_images = class_report(config, report.summary.get("samples_per_epoch"), tokenizer=tokenizer)
    return report


def default_resolution(model) -> int:
    """The training size when data.resolution is 0, as the loop will use it: read from the model's configs.

    `model` is a ModelConfig or a `model.base_model` string; see trainer/models/resolution.py.
    """
    from trainer.config import ModelConfig
    from trainer.models.resolution import native_resolution

    return native_resolution(ModelConfig(base_model=model) if isinstance(model, str) else model)[0]


def _model_resolution(model, report: Report) -> int:
    from trainer.models.resolution import native_resolution

    size, note = native_resolution(model)
    if note:
        report.add("note", "resolution-guessed", model.base_model, note)
    return size


def processes(train) -> int:
    """Processes the run trains on: one per id in `train.gpus`, else `train.num_processes`."""
    ids = [g for g in train.gpus.split(",") if g.strip()]
    return len(ids) or train.num_processes


def _check_images(found: ScanResult, report: Report, data, resolution: int) -> dict[Path, tuple]:
    """Open every image fully; return {path: ((w, h), sha256, signature)} of the readable ones."""
    sizes: dict[Path, tuple] = {}
    for item in found.items:
        try:
            loaded = read_image(item.image_path, data.background)
        except DatasetError as err:
            _refuse(report, data.skip_bad_images, item.image_path, err.what, err.fix or "")
            continue
        if not _mask_ok(report, item, loaded, data):
            continue
        width, height = loaded.image.size
        sizes[item.image_path] = ((width, height), loaded.sha256, image_signature(loaded.image))
        report.items.append(item)
        bucket = next(iter(assign_buckets([item], resolution, enabled=data.bucketing,
                                          size_of=lambda _p, s=(width, height): s)))
        if width < bucket[0] or height < bucket[1]:
            report.add("warning", "small-image", item.image_path,
                       f"is {width}x{height}, smaller than its training size {bucket[0]}x{bucket[1]}: "
                       "it will be upscaled and look soft",
                       f"Use a larger original, or train at a lower data.resolution (now {resolution}).")
    return sizes


def _mask_ok(report: Report, item: DatasetItem, loaded, data) -> bool:
    """Report the problems of the item's loss mask; False when the image cannot train (refused or skipped)."""
    ok = True
    for found in check_mask(item, loaded, data):
        if found.level == "error" and data.skip_bad_images:
            report.skipped.append(item.image_path)
            report.add("warning", "skipped", item.image_path, f"has a mask {found.path.name} that {found.message}: "
                       "skipped (data.skip_bad_images is on)")
        else:
            report.add(found.level, found.code, found.path, found.message, found.fix)
        ok = ok and found.level != "error"
    return ok


def _refuse(report: Report, skip: bool, path: Path, what: str, fix: str) -> None:
    if skip:
        report.skipped.append(path)
        report.add("warning", "skipped", path, f"{what}: skipped (data.skip_bad_images is on)")
    else:
        report.add("error", "bad-image", path, what, fix)


def _check_duplicates(report: Report, sizes: dict[Path, tuple]) -> None:
    first_with: dict[str, Path] = {}
    exact: set[Path] = set()
    for path, (_, digest, _) in sizes.items():
        if digest in first_with:
            exact.add(path)
            report.add("warning", "duplicate", path, f"has the same content as {first_with[digest]}",
                       "Remove one copy (or use a kohya N_name folder to repeat an image on purpose).")
        else:
            first_with[digest] = path
    signatures = {p: s[2] for p, s in sizes.items() if p not in exact}
    for first, second, bits in near_duplicates(signatures):
        report.add("warning", "near-duplicate", second,
                   f"looks almost the same as {first} ({bits}/64 hash bits differ)",
                   "Keep the better one unless both are wanted.")


def _check_captions(found: ScanResult, report: Report, data, tokenizer) -> None:
    for problem in found.problems:
        report.add("error", "bad-caption", problem.path, problem.message, problem.fix)
    trigger = data.trigger_word.strip()
    captioned = [i for i in report.items if i.caption_source != "default"]
    with_trigger = {id(i) for i in captioned if trigger and has_trigger(i.caption, trigger)}
    for item in report.items:
        if item.caption_source == "default":
            fallback = (f"uses the default caption {item.caption!r}" if item.caption
                        else "trains with an empty caption")
            report.add("warning", "missing-caption", item.image_path, f"has no caption file: {fallback}",
                       f"Write {item.image_path.with_suffix(data.caption_extension).name} beside it, "
                       "or set data.default_caption.")
        elif not item.caption:
            report.add("warning", "empty-caption", item.caption_path or item.image_path,
                       "is an empty caption",
                       "Describe the image, or delete the file to use data.default_caption.")
        if trigger and with_trigger and id(item) not in with_trigger and item.caption_source != "default":
            report.add("warning", "no-trigger", item.caption_path or item.image_path,
                       f"does not contain the trigger word {trigger!r} (other captions do); "
                       "it will be prepended",
                       "Add the trigger word where it belongs in the caption.")
        if tokenizer is not None:
            _check_length(report, item, add_trigger(item.caption, trigger), tokenizer)
    if trigger and captioned and not with_trigger:
        report.add("note", "trigger-prepended", report.root,
                   f"no caption contains the trigger word {trigger!r}; it will be prepended to every caption")


def _check_length(report: Report, item: DatasetItem, caption: str, tokenizer) -> None:
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    ids = tokenizer(caption, truncation=False, verbose=False)["input_ids"]
    if len(ids) > limit:
        cut = tokenizer.decode(ids[limit - 1:-1], skip_special_tokens=True).strip()
        report.add("warning", "long-caption", item.caption_path or item.image_path,
                   f"is {len(ids)} tokens; the text encoder reads {limit}, so '{cut[:60]}' is cut off",
                   "Shorten the caption (put the important words first).")


def _check_files(found: ScanResult, report: Report, skip: bool) -> None:
    for path in found.unsupported:
        _refuse(report, skip, path, f"is a {path.suffix.lstrip('.').upper()} file, which is not supported",
                "Convert it to PNG, JPEG or WebP, or remove it from the dataset.")
    for path in found.orphan_masks:
        stem = path.name[:-len(MASK_SUFFIX)]
        report.add("warning", "orphan-mask", path, f"is a loss mask with no image {stem}.png, .jpg, .jpeg or .webp "
                   "beside it, so it is not used", "Name it after its image (01.mask.png for 01.png or 01.jpg) "
                   "or delete it.")
    for path in found.orphan_captions:
        report.add("warning", "orphan-caption", path, "is a caption with no image beside it",
                   "Add its image or delete it.")
    if found.ignored:
        names = ", ".join(p.name for p in found.ignored[:5]) + (" ..." if len(found.ignored) > 5 else "")
        report.add("note", "ignored-files", report.root,
                   f"has {len(found.ignored)} other files, ignored: {names}")


def _summarise(report: Report, config, resolution: int, sizes: dict[Path, tuple[int, int]],
               tokenizer) -> None:
    data, train = config.data, config.train
    buckets = assign_buckets(report.items, resolution, enabled=data.bucketing, size_of=sizes.__getitem__)
    concepts: dict[str, dict[str, int]] = {}
    for item in report.items:
        entry = concepts.setdefault(item.concept, {"images": 0, "repeats": item.repeats})
        entry["images"] += 1
    world = processes(train)
    batches = batches_per_epoch(buckets, train.batch_size, world)
    steps_per_epoch = math.ceil(batches / train.gradient_accumulation_steps)
    report.summary = {
        "images": len(report.items),
        "concepts": concepts,
        "samples_per_epoch": sum(i.repeats for i in report.items),
        "batch_size": train.batch_size,
        "num_processes": world,
        "steps_per_epoch": steps_per_epoch,
        "epochs": round(train.steps * train.gradient_accumulation_steps / batches, 2) if batches else 0,
        "resolution": resolution,
        "bucketing": data.bucketing,
        "buckets": bucket_histogram(buckets),
        "captions": caption_mode(data),
        "caption_sources": dict(Counter(i.caption_source for i in report.items)),
        "token_limit": getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None,
        "skipped": len(report.skipped),
        "masks": mask_summary(report.items, data),
    }


def load_tokenizer(model_config, report: Report | None = None):
    """The base model's CLIP tokenizer, from local files only; None (and a note) when it cannot be found."""
    base = model_config.base_model
    try:
        light = _light_tokenizer(model_config)  # the same ids without importing transformers (most of a second)
        if light is not None:
            return light
        from transformers import CLIPTokenizer

        if base.startswith("tiny"):
            import tempfile

            from trainer.models.tokenizer import write_tiny_tokenizer

            with tempfile.TemporaryDirectory() as folder:
                return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder))
        source = model_config.base_config or base
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=True)
    except Exception as err:  # any failure only means the length check cannot run; say so, do not stop
        if report is not None:
            report.add("note", "no-tokenizer", base,
                       f"has no local tokenizer, so caption lengths were not checked ({err})")
        return None


def _light_tokenizer(model_config):
    """The CLIP tokenizer from local vocab.json + merges.txt via `tokenizers` alone; None to ask transformers."""
    from trainer.models.clip_tokens import caption_tokenizer, caption_tokenizer_from_folder

    base = model_config.base_model
    if base.startswith("tiny"):
        from trainer.models.tokenizer import tiny_vocab

        return caption_tokenizer(*tiny_vocab())
    folder = Path(model_config.base_config or base).expanduser()
    if folder.is_dir():
        return caption_tokenizer_from_folder(folder / "tokenizer")
    return None
