"""`lora-studio estimate`: will this run fit? The peak memory of one training step, by part, before training.

    lora-studio estimate --config run.toml --gradient-checkpointing
    lora-studio estimate --family sdxl --batch-size 2 --json        # the published SDXL base, no weights
    lora-studio estimate --family sdxl --fit 8GB                    # the first settings that fit 8 GiB

torch is imported only inside the command (see `trainer.estimate` for how the estimate is made).
"""

from __future__ import annotations

import argparse
import json

from trainer.cli.train import overrides_from_args
from trainer.config import OPTIMIZERS, load_config


def register(subparsers) -> None:
    parser = subparsers.add_parser("estimate", help="estimate the peak accelerator memory of a training step",
                                   description="Estimate the peak memory of one training step from the model's "
                                               "architecture (no weights are loaded). Takes the train command's "
                                               "flags; flags override the config file.")
    parser.add_argument("--config", help="TOML config, as for `lora-studio train`")
    parser.add_argument("--family", choices=["sd15", "sd2", "sdxl"],
                        help="estimate the published base model of this family (SD 1.5, SD 2.1, SDXL base) "
                             "instead of model.base_model")
    parser.add_argument("--base-model", help="as for train: tiny, a diffusers folder, a single file, a hub id")
    parser.add_argument("--base-config", metavar="DIR")
    parser.add_argument("--allow-pickle", action="store_true", default=None)
    parser.add_argument("--train-text-encoder", action="store_true", default=None)
    parser.add_argument("--data", help="dataset folder (only its caption settings matter here)")
    for flag, kind in (("--rank", int), ("--alpha", float), ("--batch-size", int), ("--resolution", int),
                       ("--steps", int), ("--seed", int), ("--lr", float)):
        parser.add_argument(flag, type=kind)
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute UNet activations in backward (train.gradient_checkpointing)")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                        help="auto is estimated as bf16 (what it picks on a current GPU)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="optim.optimizer, whose state is counted (adamw8bit: bitsandbytes' 8-bit AdamW)")
    parser.add_argument("--fit", metavar="SIZE", help="also say which settings would fit SIZE (like 8GB)")
    parser.add_argument("--json", action="store_true", help="print the parts and the total (peak_bytes) as JSON")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace):
    overrides = overrides_from_args(args)
    if args.gradient_checkpointing is not None:
        overrides["train.gradient_checkpointing"] = args.gradient_checkpointing
    if args.mixed_precision is not None:
        overrides["train.mixed_precision"] = args.mixed_precision
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from trainer.estimate import estimate_step, fit_settings, parse_size

    config = config_from_args(args)
    budget = parse_size(args.fit) if args.fit else None
    if budget is None:
        est, fit = estimate_step(config, family=args.family), None
    else:
        fit = fit_settings(config, budget, family=args.family)
        est = fit.original
    if args.json:
        record = est.to_dict()
        if fit is not None:
            record["fit"] = {"budget_bytes": budget, "changes": fit.changes,
                             "peak_bytes": fit.fitted.peak_bytes if fit.fitted else None,
                             "tried": [{"changes": c, "peak_bytes": p} for c, p in fit.tried]}
        print(json.dumps(record, indent=2))
        return 0
    print(describe(est))
    if fit is not None:
        print(describe_fit(fit))
    return 0


def describe(est) -> str:
    from trainer.estimate import format_bytes

    s = est.settings
    lines = [f"{s['family']} ({est.source}), {s['resolution']} px, batch {s['batch_size']}, rank {s['rank']}, "
             f"{s['mixed_precision']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
             f"text encoder {'trained' if s['train_text_encoder'] else 'frozen'}, "
             f"text {'cached' if s['cached_text'] else 'encoded every step'}, {s['optimizer']}"]
    lines += [f"  {name:<12}{format_bytes(value):>12}" for name, value in est.parts.items()]
    lines.append(f"  {'peak':<12}{format_bytes(est.peak_bytes):>12}  (plus the CUDA context, ~0.3-1 GB)")
    return "\n".join(lines)


def describe_fit(fit) -> str:
    from trainer.estimate import format_bytes

    budget = format_bytes(fit.budget)
    if fit.changes == []:
        return f"fits {budget} as it is"
    if fit.changes is None:
        smallest = min((p for _, p in fit.tried), default=fit.original.peak_bytes)
        return (f"does not fit {budget} even with every change tried (smallest: {format_bytes(smallest)}); "
                "use a larger card or a smaller model")
    return (f"to fit {budget} ({format_bytes(fit.fitted.peak_bytes)}), set:\n"
            + "\n".join(f"  {line}" for line in fit.changes))
