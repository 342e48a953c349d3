"""`lora-studio tiny-model OUT --family sd15|sd2|sdxl`: write an embedded tiny model as a diffusers folder.

    lora-studio tiny-model tiny-sdxl/ --family sdxl
    lora-studio train --base-model tiny-sdxl/ ...
"""

from __future__ import annotations

import argparse

from trainer.models.tiny import TINY_RESOLUTION


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tiny-model", help="write a tiny SD 1.x, SD 2.x or SDXL model (a few MB) as a diffusers folder",
        description="Write the embedded tiny model of a family as a diffusers folder that the family's "
                    "pipeline class (StableDiffusionPipeline, StableDiffusionXLPipeline) loads.")
    parser.add_argument("out_dir", help="folder to write (StableDiffusionPipeline or "
                                        "StableDiffusionXLPipeline.from_pretrained loads it)")
    parser.add_argument("--family", choices=sorted(TINY_RESOLUTION), default="sd15",
                        help="model family (default: sd15)")
    parser.add_argument("--random", action="store_true",
                        help="sd15, sdxl: the seeded random weights (tiny-random, tiny-sdxl-random) instead of "
                             "the pretrained ones that draw")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainer.models.tiny import save_tiny_model

    print(save_tiny_model(args.family, args.out_dir, random_weights=args.random))
    return 0
