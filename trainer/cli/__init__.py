"""The `lora-studio` command. Each area registers its subcommands from its own module.

    lora-studio train --data datasets/example --steps 200 --output runs/first
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainer.errors import StudioError

# One module per area, each with `register(subparsers)`; handlers are set with `set_defaults(handler=…)`.
COMMAND_MODULES = ("train", "models", "doctor", "caption", "jobs", "generate", "serve", "health", "estimate",
                   "loratools")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-studio", description="Train, export and preview Stable "
                                     "Diffusion LoRAs (web UI: `lora-studio serve`).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"trainer.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
