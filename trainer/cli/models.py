"""`lora-studio tiny-model OUT_DIR`: write the embedded tiny model as a diffusers folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("tiny-model", help="write the embedded tiny SD model as a diffusers folder")
    parser.add_argument("out_dir", help="folder to write (StableDiffusionPipeline.from_pretrained loads it)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainer.models.tiny import save_tiny_model

    print(save_tiny_model("sd15", args.out_dir))
    return 0
