"""`lora-studio train`: a config file and/or flags in, a LoRA out, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trainer.config import load_config
from trainer.events import CheckpointSaved, Done, Event, Failed, Progress, SampleSaved, Started

# flag -> dotted config field; flags override the file.
FLAG_FIELDS = {
    "base_model": "model.base_model",
    "data": "data.path",
    "output": "export.output_dir",
    "name": "export.name",
    "steps": "train.steps",
    "rank": "network.rank",
    "alpha": "network.alpha",
    "lr": "optim.learning_rate",
    "batch_size": "train.batch_size",
    "resolution": "data.resolution",
    "seed": "train.seed",
    "save_every": "train.save_every",
    "trigger_word": "data.trigger_word",
    "base_config": "model.base_config",
    "allow_pickle": "model.allow_pickle",
    "prediction_type": "model.prediction_type",
    "train_text_encoder": "network.train_text_encoder",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from a config file and/or flags",
                                   description="Train a LoRA. Flags override the config file.")
    parser.add_argument("--config", help="TOML config (see `lora-studio config` for every setting)")
    parser.add_argument("--base-model", help="tiny, tiny-sd2, tiny-sdxl, a hub id, a diffusers folder or a "
                                             "single-file .safetensors checkpoint")
    parser.add_argument("--base-config", metavar="DIR", help="for a single-file checkpoint: a diffusers folder "
                                                          "(or hub id) with its configs and tokenizers")
    parser.add_argument("--allow-pickle", action="store_true", default=None,
                        help="allow .ckpt/.bin/.pt base models (loaded with torch.load(weights_only=True))")
    parser.add_argument("--prediction-type", choices=["auto", "epsilon", "v_prediction"])
    parser.add_argument("--train-text-encoder", action="store_true", default=None,
                        help="also train LoRA layers on the text encoder(s)")
    parser.add_argument("--data", help="dataset folder")
    parser.add_argument("--output", help="output folder")
    parser.add_argument("--name", help="LoRA file name")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-every", type=int, help="checkpoint every N steps")
    parser.add_argument("--trigger-word")
    parser.add_argument("--resume", metavar="DIR", help="resume from a run folder's newest checkpoint")
    parser.set_defaults(handler=run)

    show = subparsers.add_parser("config", help="print the default config (or a file's, completed) as TOML")
    show.add_argument("--config")
    show.set_defaults(handler=print_config)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {dotted: getattr(args, flag) for flag, dotted in FLAG_FIELDS.items()
            if getattr(args, flag, None) is not None}


def run(args: argparse.Namespace) -> int:
    from trainer.loop import train

    config = load_config(args.config, overrides_from_args(args))
    bar = ProgressPrinter()
    result = train(config, on_event=bar, resume_from=args.resume,
                   workdir=args.resume or None)
    bar.close()
    for path in result.outputs:
        print(path)
    return 0


def print_config(args: argparse.Namespace) -> int:
    from trainer.config import config_to_toml

    print(config_to_toml(load_config(args.config)), end="")
    return 0


class ProgressPrinter:
    """Turns training events into a terminal progress bar (step, loss, it/s, ETA) and log lines."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            print(f"training on {event.device} ({event.mixed_precision}), {event.num_images} images, "
                  f"text cache {'on' if event.cached_text else 'off (captions change per step)'}",
                  file=sys.stderr)
            self.bar = self._tqdm(total=event.total_steps, initial=event.start_step, unit="step",
                                  dynamic_ncols=True)
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif isinstance(event, (SampleSaved, CheckpointSaved)):
            what = "samples" if isinstance(event, SampleSaved) else "checkpoint"
            self._write(f"step {event.step}: {what} -> {getattr(event, 'path', None) or event.paths[0]}")
        elif isinstance(event, Done):
            self._write("stopped; checkpoint written" if event.stopped else "done")
        elif isinstance(event, Failed):
            self._write(f"failed: {event.error}")

    def _write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
