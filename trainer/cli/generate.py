"""`lora-studio generate` and `lora-studio grid`: previews of LoRA files on a base model.

    lora-studio generate --base-model tiny --lora ink.safetensors:0.7 --prompt "a lighthouse" --out out.png
    lora-studio grid --base-model tiny --lora ink.safetensors --prompt "a cat" --prompt "a dog" --out grid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    gen = subparsers.add_parser("generate", help="render an image with LoRAs at chosen strengths")
    _common(gen)
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                     help="a LoRA file and its strength (default 1.0); repeat to mix LoRAs")
    gen.add_argument("--prompt", required=True, help="the prompt")
    gen.add_argument("--num-images", type=int, default=1, help="images to render (saved as out-N.png if > 1)")
    gen.add_argument("--out", default="out.png", help="PNG file to write")
    gen.set_defaults(handler=run_generate)

    grid = subparsers.add_parser("grid", help="a labelled grid: strengths across, prompts (and LoRAs) down")
    _common(grid)
    grid.add_argument("--lora", action="append", required=True, metavar="FILE",
                      help="a LoRA file (or a checkpoint's); repeat to compare several")
    grid.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for more rows")
    grid.add_argument("--strengths", default="0,0.25,0.5,0.75,1", help="comma-separated strengths (columns)")
    grid.add_argument("--out", default="grid.png", help="PNG file to write")
    grid.set_defaults(handler=run_grid)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default="tiny", help="'tiny' or a local diffusers folder")
    parser.add_argument("--negative-prompt", default="", help="what the image should not show")
    parser.add_argument("--seed", type=int, default=0, help="seed (the same seed, the same image)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--width", type=int, default=None, help="width in pixels (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="height in pixels (default: the model's)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a LoRA whose file has keys matching no layer of the base model (they are "
                             "listed); without it such a file is refused")


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`style.safetensors:0.7` -> (path, 0.7); no suffix means strength 1.0 (`C:` is no suffix)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def run_generate(args: argparse.Namespace) -> int:
    from trainer.generate import save_png

    pool, names = _pool_with(args.base_model, [parse_lora_arg(item) for item in args.lora], args.allow_partial)
    images = pool.generate(args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                           steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                           strengths=names, num_images=args.num_images)
    out = Path(args.out)
    for index, image in enumerate(images):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}-{index}{out.suffix or '.png'}")
        print(save_png(image, path))
    return 0


def run_grid(args: argparse.Namespace) -> int:
    from trainer.errors import StudioError
    from trainer.generate import save_png

    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError as err:
        raise StudioError(f"--strengths must be numbers separated by commas, got {args.strengths!r}",
                          fix="For example --strengths 0,0.5,1") from err
    pool, names = _pool_with(args.base_model, [(parse_lora_arg(item)[0], 1.0) for item in args.lora],
                              args.allow_partial)
    image = pool.grid(args.prompt, strengths=strengths, seed=args.seed, loras=list(names),
                      negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                      width=args.width, height=args.height)
    print(save_png(image, args.out))
    return 0


def _pool_with(base_model: str, loras: list[tuple[Path, float]], allow_partial: bool = False):
    """A pool with every file loaded, named by its stem; each file's load report goes to stderr."""
    from trainer.generate import AdapterPool

    pool = AdapterPool(base_model)
    strengths: dict[str, float] = {}
    for path, strength in loras:
        stem = path.name.removesuffix(".safetensors").removesuffix(".peft")
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "lora"
        while name in strengths:
            name += "_"
        report = pool.load(name, path, allow_partial=allow_partial)
        print(f"loaded {path} as {name!r}: {report.format} keys, rank {report.rank}, {report.layers} layers, "
              f"strength {strength:g}", file=sys.stderr)
        if report.unmatched:
            shown = ", ".join(report.unmatched[:5]) + (" …" if len(report.unmatched) > 5 else "")
            print(f"warning: {path}: {len(report.unmatched)} keys match no layer of the base model and were "
                  f"left out: {shown}", file=sys.stderr)
        strengths[name] = strength
    return pool, strengths
