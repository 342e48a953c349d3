"""`lora-studio doctor DATASET` (check a dataset before training) and `lora-studio import-dataset ZIP`.

    lora-studio doctor datasets/cats --trigger-word sks --batch-size 2      # exit 1 when there are errors
    lora-studio import-dataset upload.zip --name cats                       # into $LORA_STUDIO_HOME/datasets
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# flag -> dotted config field; flags override the config file.
FLAG_FIELDS = {
    "base_model": "model.base_model",
    "resolution": "data.resolution",
    "batch_size": "train.batch_size",
    "num_processes": "train.num_processes",
    "gpus": "train.gpus",
    "steps": "train.steps",
    "trigger_word": "data.trigger_word",
    "caption_extension": "data.caption_extension",
    "default_caption": "data.default_caption",
    "background": "data.background",
    "masked_loss": "data.masked_loss",
    "alpha_mask": "data.alpha_mask",
    "class_dir": "data.class_dir",
    "class_prompt": "data.class_prompt",
    "num_class_images": "data.num_class_images",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check a dataset for problems before training",
        description="Check every image and caption of a dataset and print errors (which stop training), "
                    "warnings and a summary. Exits with 1 when there are errors.")
    parser.add_argument("dataset", help="dataset folder")
    parser.add_argument("--config", help="TOML config whose [data], [model] and [train] settings apply")
    parser.add_argument("--base-model", help="model whose tokenizer counts caption tokens and whose configs give "
                                             "the training resolution (default: tiny)")
    parser.add_argument("--resolution", type=int, help="training resolution (default: the model's own)")
    parser.add_argument("--batch-size", type=int, help="batch size for the steps-per-epoch figure")
    parser.add_argument("--steps", type=int, help="training steps, to show how many epochs they make")
    parser.add_argument("--num-processes", type=int,
                        help="processes (GPUs) the run trains on: each step takes this many batches")
    parser.add_argument("--gpus", help='GPU ids the run trains on, like "0,1" (one process each)')
    parser.add_argument("--trigger-word")
    parser.add_argument("--caption-extension", help="caption file extension (default .txt)")
    parser.add_argument("--default-caption", help="caption for images without one")
    parser.add_argument("--background", help="colour under transparent pixels")
    parser.add_argument("--skip-bad-images", action="store_true", default=None,
                        help="list bad images as skipped instead of errors")
    parser.add_argument("--no-masked-loss", dest="masked_loss", action="store_false", default=None,
                        help="ignore the loss masks (<name>.mask.png): not checked, not used")
    parser.add_argument("--alpha-mask", action="store_true", default=None,
                        help="use the alpha channel of images without a mask file as their loss mask")
    parser.add_argument("--no-bucketing", dest="bucketing", action="store_false", default=None,
                        help="square crops instead of aspect-ratio buckets")
    parser.add_argument("--class-dir", metavar="DIR", help="prior preservation: also check this class image folder")
    parser.add_argument("--class-prompt", metavar="TEXT", help="caption of class images without one")
    parser.add_argument("--num-class-images", type=int, metavar="N",
                        help="class images the run will draw (reports whether they are cached yet)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--limit", type=int, default=20, help="files shown per check (default 20)")
    parser.set_defaults(handler=run_doctor)

    importer = subparsers.add_parser(
        "import-dataset", help="import a .zip of images and captions as a dataset",
        description="Unpack a .zip into <datasets>/<name>/, refusing unsafe archives whole.")
    importer.add_argument("archive", help="the .zip file")
    importer.add_argument("--name", required=True, help="dataset name (the folder created)")
    importer.add_argument("--into",
                          help="datasets folder (default: $LORA_STUDIO_HOME/datasets, or ./datasets)")
    importer.add_argument("--merge", action="store_true",
                          help="add the files to an existing dataset (refused if any file is already there)")
    importer.set_defaults(handler=run_import)


def run_doctor(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.data import doctor
    from trainer.data.doctor import with_class_images

    overrides = {dotted: getattr(args, flag) for flag, dotted in FLAG_FIELDS.items()
                 if getattr(args, flag, None) is not None}
    if args.skip_bad_images:
        overrides["data.skip_bad_images"] = True
    if args.bucketing is False:
        overrides["data.bucketing"] = False
    overrides["data.path"] = args.dataset
    config = load_config(args.config, overrides)
    report = with_class_images(doctor(args.dataset, config), config)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(limit=args.limit))
    return 0 if report.ok else 1


def run_import(args: argparse.Namespace) -> int:
    from trainer.data import import_archive

    home = os.environ.get("LORA_STUDIO_HOME")
    into = Path(args.into) if args.into else (Path(home) / "datasets" if home else Path("datasets"))
    report = import_archive(args.archive, into, args.name, merge=args.merge)
    print(report.format())
    print(f"Check it with: lora-studio doctor {report.dataset_dir}")
    return 0
