"""`lora-studio caption DATASET --model ID`: write a caption beside each image with a captioner or a tagger.

    lora-studio caption datasets/cats --model Salesforce/blip-image-captioning-base --prefix sks
    lora-studio caption datasets/cats --model models/wd-tagger --kind tagger --mode append --threshold 0.4

torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"


def register(subparsers: argparse._SubParsersAction) -> None:
    from trainer.data.autocaption import MODES
    from trainer.data.captioners import DEFAULT_THRESHOLD, KINDS

    p = subparsers.add_parser(
        "caption", help="caption a dataset's images with a BLIP-style captioner or a WD14-style tagger",
        description="Run a captioning model over every image of a dataset and write the .txt captions.")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="captioner (sentences) or tagger (tags); auto reads the model's config (default)")
    p.add_argument("--mode", choices=MODES, default="missing",
                   help="missing: only images without a caption (default); overwrite: every image; "
                        "append: add after the existing caption")
    p.add_argument("--prefix", default="", help="trigger word put first in every written caption")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"tagger: keep tags scoring at least this (default {DEFAULT_THRESHOLD})")
    p.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.set_defaults(handler=run_caption)


def run_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.data.autocaption import caption_dataset
    from trainer.data.captioners import load_captioner

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    captioner = load_captioner(args.model, kind=args.kind, device=device, threshold=args.threshold)
    print(f"captioning with {args.model} ({captioner.kind}) on {device}", file=sys.stderr)
    bar = tqdm(unit="image", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = caption_dataset(args.dataset, captioner, mode=args.mode, prefix=args.prefix,
                                 batch_size=args.batch_size, on_progress=progress)
    finally:
        bar.close()
    for name, caption in report.written.items():
        print(f"{name}: {caption}")
    print(report.format(), file=sys.stderr)
    return 1 if report.failed and not report.written else 0
