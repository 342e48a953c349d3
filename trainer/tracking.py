"""Loss, learning rate and sample images to TensorBoard (or wandb) through accelerate's trackers.

    accelerator = Accelerator(**tracker_kwargs(config, workdir))   # log_with + project_dir
    start_tracking(accelerator, config)                             # once, after the config is final
    log_progress(accelerator, progress_event)                       # every step (main process only)

TensorBoard event files go to `<workdir>/logs/<export.name>/` (a job: `<home>/jobs/<id>/logs/…`), so
`tensorboard --logdir <home>/jobs` shows every job side by side. `train.log_with = "auto"` logs to TensorBoard
when the optional `tensorboard` package is installed (`pip install 'lora-studio[tensorboard]'`) and to nothing
otherwise; `wandb` is opt-in and needs `pip install wandb` and `wandb login`.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.utils import is_tensorboard_available, is_wandb_available

from trainer.config import TrainConfig
from trainer.errors import ConfigError

LOG_WITH = ("auto", "tensorboard", "wandb", "none")
WANDB_PROJECT = "lora-studio"


def resolve_log_with(config: TrainConfig) -> str:
    """The tracker this run will use ("none" when off); an explicit choice that is not installed is an error."""
    choice = config.train.log_with
    if choice == "auto":
        return "tensorboard" if is_tensorboard_available() else "none"
    if choice == "tensorboard" and not is_tensorboard_available():
        raise ConfigError(["train.log_with is 'tensorboard' but the tensorboard package is not installed: "
                           "pip install 'lora-studio[tensorboard]', or set train.log_with = 'none'"])
    if choice == "wandb" and not is_wandb_available():
        raise ConfigError(["train.log_with is 'wandb' but the wandb package is not installed: "
                           "pip install wandb && wandb login, or set train.log_with = 'none'"])
    return choice


def logs_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "logs"


def tracker_kwargs(config: TrainConfig, workdir: str | Path) -> dict:
    """`Accelerator(...)` arguments that switch the tracker on; empty when logging is off."""
    log_with = resolve_log_with(config)
    if log_with == "none":
        return {}
    return {"log_with": log_with, "project_dir": str(logs_dir(workdir))}


def run_log_dir(accelerator, config: TrainConfig) -> str:
    """Where this run's TensorBoard files are (empty when TensorBoard is not on), to show in the UI and CLI."""
    if not any(t.name == "tensorboard" for t in accelerator.trackers):
        return ""
    return str(Path(accelerator.logging_dir) / config.export.name)


def start_tracking(accelerator, config: TrainConfig) -> None:
    """Open the run in each tracker with the config as its hyperparameters (accelerate does this on rank 0 only)."""
    log_with = resolve_log_with(config)
    if log_with == "none":
        return
    name = config.export.name
    project = WANDB_PROJECT if log_with == "wandb" else name
    init = {"wandb": {"name": name, "dir": str(accelerator.logging_dir)}}
    accelerator.init_trackers(project, config=_hparams(config.to_dict()), init_kwargs=init)


def log_progress(accelerator, step: int, loss: float, lr: float, it_per_s: float) -> None:
    if accelerator.trackers:
        accelerator.log({"train/loss": loss, "train/learning_rate": lr, "train/it_per_s": it_per_s}, step=step)


def log_validation(accelerator, step: int, loss: float) -> None:
    """The validation loss (trainer/validation.py) as `validation/loss`, beside `train/loss`."""
    if accelerator.trackers:
        accelerator.log({"validation/loss": loss}, step=step)


def log_samples(accelerator, step: int, paths: list[Path]) -> None:
    """The sample images of a step as one TensorBoard image grid row (wandb gets them as images too)."""
    if not accelerator.trackers or not paths:
        return
    import numpy as np
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": images}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": list(images)}, step=step)


def _hparams(tree: dict, prefix: str = "") -> dict:
    """Flatten the config to `section.field` scalars: TensorBoard's hparams accept no lists or tables."""
    flat: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            flat[f"{prefix}{key}"] = json.dumps(value)
        else:
            flat[f"{prefix}{key}"] = value
    return flat
