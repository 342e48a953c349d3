"""`lora-studio merge`, `resize` and `extract`: tools on finished LoRAs (trainer/lora_tools/).

    lora-studio merge tiny ink.safetensors:0.7 film.safetensors:0.3 --out merged.safetensors
    lora-studio resize ink.safetensors --rank 4 --out ink-r4.safetensors
    lora-studio extract merged.safetensors tiny --rank 16 --out extracted.safetensors
"""

from __future__ import annotations

import argparse
import sys

from trainer.cli.generate import parse_lora_arg


def register(subparsers) -> None:
    merge = subparsers.add_parser(
        "merge", help="bake LoRAs into a base model (a single .safetensors file or a diffusers folder)",
        description="Add each LoRA at its strength to the base weights: the result needs no LoRA at inference.")
    merge.add_argument("base_model", metavar="BASE", help="what --base-model accepts: tiny, tiny-sd2, tiny-sdxl, "
                                                          "a diffusers folder, a single .safetensors file, a hub id")
    merge.add_argument("loras", nargs="+", metavar="LORA[:STRENGTH]", help="LoRA files, each with a strength "
                                                                            "(default 1.0)")
    merge.add_argument("--out", required=True, help="a path ending in .safetensors writes a single-file "
                                                    "checkpoint (A1111/ComfyUI layout); any other a diffusers folder")
    merge.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                       help="weights of the output (auto: the dtype the base stores; merging runs in float32)")
    merge.add_argument("--allow-partial", action="store_true",
                       help="merge a LoRA whose file has keys that match no layer of the base (they are left out)")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    merge.set_defaults(handler=run_merge)

    resize = subparsers.add_parser("resize", help="lower a LoRA's rank by SVD, reporting how much of it is kept")
    resize.add_argument("lora", metavar="LORA", help="a kohya-format LoRA file (.safetensors)")
    resize.add_argument("--rank", type=int, required=True, help="the new rank (layers already lower keep theirs)")
    resize.add_argument("--out", required=True, help="the .safetensors file to write")
    resize.add_argument("--keep", type=float, default=None, metavar="SHARE",
                        help="per layer, the smallest rank (up to --rank) that keeps this share of the update's "
                             "Frobenius norm, e.g. 0.95 (sd-scripts' sv_fro); without it every layer gets --rank")
    _verbose(resize)
    resize.set_defaults(handler=run_resize)

    extract = subparsers.add_parser("extract", help="a LoRA from the difference of two checkpoints (SVD)")
    extract.add_argument("tuned", metavar="TUNED", help="the fine-tuned model (anything --base-model accepts)")
    extract.add_argument("base", metavar="BASE", help="the model it was tuned from")
    extract.add_argument("--rank", type=int, required=True, help="rank of the LoRA (alpha = rank)")
    extract.add_argument("--out", required=True, help="the .safetensors file to write")
    extract.add_argument("--min-diff", type=float, default=0.01,
                         help="a text encoder whose weights differ by no more than this is left out (default 0.01, "
                              "as sd-scripts)")
    _verbose(extract)
    extract.set_defaults(handler=run_extract)


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="print the share kept for every layer")


def run_merge(args: argparse.Namespace) -> int:
    from trainer.lora_tools.merge import merge_loras

    loras = [parse_lora_arg(item) for item in args.loras]
    report = merge_loras(args.base_model, loras, args.out, dtype=args.dtype, allow_partial=args.allow_partial,
                         overwrite=args.overwrite)
    for path, keys in report.unmatched.items():
        print(f"warning: {path}: {len(keys)} keys match no layer of the base model and were left out: "
              f"{', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}", file=sys.stderr)
    mix = ", ".join(f"{path} x {strength:g}" for path, strength in loras)
    print(f"merged {mix} into {args.base_model} ({report.family}, {report.layers} layers): {report.layout} "
          f"{report.dtype}", file=sys.stderr)
    print(report.out)
    return 0


def run_resize(args: argparse.Namespace) -> int:
    from trainer.lora_tools.resize import resize_lora

    report = resize_lora(args.lora, args.rank, args.out, share=args.keep)
    _print_report(report, args.verbose)
    print(args.out)
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from trainer.lora_tools.extract import extract_lora

    report = extract_lora(args.tuned, args.base, args.rank, args.out, min_diff=args.min_diff)
    _print_report(report, args.verbose)
    print(args.out)
    return 0


def _print_report(report, verbose: bool) -> None:
    for line in report.lines() if verbose else []:
        print(line, file=sys.stderr)
    print(report.summary(), file=sys.stderr)
