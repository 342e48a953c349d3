"""`lora-studio train`: a config file and/or flags in, a LoRA out, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trainer.config import OPTIMIZERS, load_config
from trainer.events import CheckpointSaved, ClassImages, Done, Event, Failed, Progress, SampleSaved, Started, Validation

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
    "optimizer": "optim.optimizer",
    "batch_size": "train.batch_size",
    "resolution": "data.resolution",
    "seed": "train.seed",
    "save_every": "train.save_every",
    "trigger_word": "data.trigger_word",
    "skip_bad_images": "data.skip_bad_images",
    "masked_loss": "data.masked_loss",
    "alpha_mask": "data.alpha_mask",
    "num_processes": "train.num_processes",
    "base_config": "model.base_config",
    "allow_pickle": "model.allow_pickle",
    "quantize": "model.quantize",
    "prediction_type": "model.prediction_type",
    "train_text_encoder": "network.train_text_encoder",
    "validation_fraction": "data.validation_fraction",
    "validation_dir": "data.validation_dir",
    "validate_every": "train.validate_every",
    "validation_timesteps": "train.validation_timesteps",
    "early_stop_patience": "train.early_stop_patience",
    "ema_decay": "train.ema_decay",
    "ema_on_cpu": "train.ema_on_cpu",
    "class_dir": "data.class_dir",
    "class_prompt": "data.class_prompt",
    "num_class_images": "data.num_class_images",
    "prior_loss_weight": "train.prior_loss_weight",
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
    parser.add_argument("--quantize", choices=["none", "nf4"],
                        help="nf4: the frozen UNet in 4 bits (QLoRA-style; needs bitsandbytes)")
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
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="adamw (default), adamw8bit (CUDA + bitsandbytes), prodigy (use --lr 1), schedulefree "
                             "(constant schedule) or adafactor")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-every", type=int, help="checkpoint every N steps")
    parser.add_argument("--trigger-word")
    parser.add_argument("--skip-bad-images", action="store_true", default=None,
                        help="drop images the dataset doctor refuses (and list them) instead of stopping")
    parser.add_argument("--no-masked-loss", dest="masked_loss", action="store_false", default=None,
                        help="ignore the loss masks (<name>.mask.png) instead of weighting the loss by them")
    parser.add_argument("--alpha-mask", action="store_true", default=None,
                        help="use the alpha channel of images without a mask file as their loss mask")
    parser.add_argument("--validation-fraction", type=float, metavar="F",
                        help="hold out this fraction (0..0.5, at least one image) of the dataset as a validation set")
    parser.add_argument("--validation-dir", metavar="DIR", help="a folder of images to validate on instead")
    parser.add_argument("--validate-every", type=int, metavar="N",
                        help="validation loss every N steps (fixed timesteps and noise); the best step's LoRA is "
                             "kept as <name>.best.safetensors")
    parser.add_argument("--validation-timesteps", type=int, metavar="N", help="timesteps scored per image (4)")
    parser.add_argument("--early-stop-patience", type=int, metavar="N",
                        help="stop after N validation checks without improvement (0: off)")
    parser.add_argument("--ema-decay", type=float, metavar="D",
                        help="keep an EMA of the LoRA weights with this decay (like 0.999) and export it; 0: off")
    parser.add_argument("--ema-on-cpu", action="store_true", default=None,
                        help="keep the EMA copy in CPU memory instead of on the GPU")
    parser.add_argument("--class-dir", metavar="DIR",
                        help="prior preservation: a folder of class (regularization) images with captions")
    parser.add_argument("--class-prompt", metavar="TEXT",
                        help="prior preservation: the class prompt (captions class images that have none)")
    parser.add_argument("--num-class-images", type=int, metavar="N",
                        help="draw N class images from the base model with --class-prompt once (cached)")
    parser.add_argument("--prior-loss-weight", type=float, metavar="W", help="loss weight of class images (1.0)")
    parser.add_argument("--resume", metavar="DIR", help="resume from a run folder's newest checkpoint")
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="train on N processes (GPUs; CPU processes without a GPU) through accelerate")
    parser.add_argument("--gpus", metavar="IDS", help="GPU ids to train on, like 0,1 (implies --num-processes)")
    parser.add_argument("--workdir", metavar="DIR", help="folder for checkpoints, samples and logs "
                        "(default: the output folder, or the --resume folder)")
    parser.add_argument("--events", metavar="FILE", help="also append every event to FILE as a JSON line")
    parser.add_argument("--stop-file", metavar="FILE",
                        help="stop gracefully (checkpoint, then exit) once FILE exists; SIGTERM does the same")
    parser.set_defaults(handler=run)

    show = subparsers.add_parser("config", help="print the default config (or a file's, completed) as TOML")
    show.add_argument("--config")
    show.set_defaults(handler=print_config)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {dotted: getattr(args, flag) for flag, dotted in FLAG_FIELDS.items()
            if getattr(args, flag, None) is not None}


def run(args: argparse.Namespace) -> int:
    from trainer import distributed

    config = load_config(args.config, overrides_from_args(args))
    workdir = args.workdir or args.resume or None
    args.gpus = args.gpus or config.train.gpus or None
    if (config.train.num_processes > 1 or args.gpus) and not distributed.in_launched_process():
        return _relaunch(config, args, workdir)
    from trainer.loop import train
    from trainer.precision import pin_threads

    pin_threads(config.train.num_threads)  # from the config, not from whichever shell started this
    bar = ProgressPrinter()
    sinks = [bar] + ([EventFile(args.events)] if args.events else [])

    def on_event(event: Event) -> None:
        for sink in sinks:
            sink(event)

    result = train(config, on_event=on_event, should_stop=StopFlag(args.stop_file), resume_from=args.resume,
                   workdir=workdir)
    bar.close()
    for path in result.outputs:
        print(path)
    return 0


def _relaunch(config, args: argparse.Namespace, workdir: str | None) -> int:
    """Start N copies of this command through accelerate, with the config (flags applied) in a file."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from trainer import distributed
    from trainer.config import save_config

    count = len([g for g in args.gpus.split(",") if g.strip()]) if args.gpus else config.train.num_processes
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, num_processes=count,
                                                                   gpus=args.gpus or ""))
    with tempfile.TemporaryDirectory(prefix="lora-studio-launch-") as folder:
        config_path = save_config(config, Path(folder) / "config.toml")
        return distributed.launch_train(config_path, count, gpus=args.gpus,
                                        resume_from=args.resume, workdir=workdir, events_path=args.events,
                                        stop_file=args.stop_file)


class EventFile:
    """Appends each event as one JSON line (one `write`, so a reader never sees half of one), so a launcher's
    caller, such as the job runner, can follow a distributed run. NaN becomes null: JSON has no NaN."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: Event) -> None:
        import json
        import math
        import os

        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in event.to_dict().items()}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record, default=str) + "\n").encode("utf-8"))
        finally:
            os.close(fd)


class StopFlag:
    """`should_stop` for the loop: a stop file appeared, or SIGTERM arrived (`docker stop`, the launcher)."""

    def __init__(self, stop_file: str | None) -> None:
        import signal

        self.stop_file = stop_file
        self.terminated = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.terminated = True

    def __call__(self) -> bool:
        import os

        return self.terminated or bool(self.stop_file and os.path.exists(self.stop_file))


def print_config(args: argparse.Namespace) -> int:
    from trainer.config_toml import commented_toml

    print(commented_toml(load_config(args.config)), end="")
    return 0


def precision_words(mixed_precision: str) -> str:
    """accelerate's mixed-precision value as a person reads it ("no" means full float32)."""
    if mixed_precision in ("no", "", None):
        return "float32, no mixed precision"
    return f"{mixed_precision} mixed precision"


class ProgressPrinter:
    """Turns training events into a terminal progress bar (step, loss, it/s, ETA) and log lines."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            where = f"{event.num_processes} processes" if event.num_processes > 1 else event.device
            print(f"training on {where} ({precision_words(event.mixed_precision)}), {event.num_images} images, "
                  f"text cache {'on' if event.cached_text else 'off (captions change per step)'}",
                  file=sys.stderr)
            for path in event.skipped:
                print(f"skipped (data.skip_bad_images): {path}", file=sys.stderr)
            if event.log_dir:
                print(f"TensorBoard: tensorboard --logdir {event.log_dir}", file=sys.stderr)
            self.bar = self._tqdm(total=event.total_steps, initial=event.start_step, unit="step",
                                  dynamic_ncols=True)
        elif isinstance(event, ClassImages):
            made = f", {event.generated} drawn now" if event.generated else ""
            print(f"class images: {event.images} in {event.folder}{made}, {event.samples_per_epoch} per epoch",
                  file=sys.stderr)
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif isinstance(event, (SampleSaved, CheckpointSaved)):
            what = "samples" if isinstance(event, SampleSaved) else "checkpoint"
            self._write(f"step {event.step}: {what} -> {getattr(event, 'path', None) or event.paths[0]}")
        elif isinstance(event, Validation):
            self._write(f"step {event.step}: validation loss {event.loss:.4f} (best: step {event.best_step})")
        elif isinstance(event, Done):
            self._write("stopped; checkpoint written" if event.stopped else
                        "early stop: validation loss stopped improving" if event.early_stopped else "done")
            if event.best_step:
                self._write(f"best step {event.best_step} (validation loss {event.best_loss:.4f}): "
                            "<name>.best.safetensors")
        elif isinstance(event, Failed):
            self._write(f"failed: {event.error}")

    def _write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
