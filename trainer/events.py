"""What a training run tells the outside world: small event dataclasses, one per kind.

    train(config, on_event=lambda e: print(e.kind, e.to_dict()))

The job runner writes them to `events.jsonl` one JSON object a line; the CLI draws a progress bar from them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass
class Started(Event):
    kind: ClassVar[str] = "started"
    total_steps: int
    start_step: int
    device: str
    mixed_precision: str
    cached_text: bool
    cached_latents: bool
    num_images: int
    skipped: list[str] = field(default_factory=list)
    """Images the dataset doctor refused and `data.skip_bad_images` dropped."""
    num_processes: int = 1
    num_validation: int = 0
    """Images held out as the validation set (not trained on); 0 without validation."""
    log_dir: str = ""
    """TensorBoard event files of this run (`tensorboard --logdir …`); empty when logging is off."""
    fused_attention: int = 0
    """Attention modules given the fused LoRA processor (trainer/lora_attention.py): a LoRA run on a CPU."""


@dataclass
class ClassImages(Event):
    kind: ClassVar[str] = "class_images"
    folder: str
    """Prior preservation: the class images' folder (`data.class_dir`, or the generated images' cache)."""
    images: int
    generated: int = 0
    """Images drawn from the base model by this run: 0 when a class folder or a complete cache was used."""
    samples_per_epoch: int = 0
    """Class samples trained each epoch (as many as the training samples)."""


@dataclass
class Progress(Event):
    kind: ClassVar[str] = "progress"
    step: int
    total_steps: int
    loss: float
    lr: float
    it_per_s: float
    eta_s: float
    epoch: int


@dataclass
class SampleSaved(Event):
    kind: ClassVar[str] = "sample"
    step: int
    paths: list[str]
    prompts: list[str] = field(default_factory=list)
    """The prompt of each image, in the order of `paths` (the config's, or the dataset's first caption)."""


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass
class Validation(Event):
    kind: ClassVar[str] = "validation"
    step: int
    loss: float
    """Mean loss on the validation set at fixed timesteps and noise (trainer/validation.py)."""
    best_step: int
    best_loss: float


@dataclass
class Done(Event):
    kind: ClassVar[str] = "done"
    step: int
    outputs: list[str]
    stopped: bool = False
    best_step: int = 0
    """The step with the lowest validation loss (exported as `<name>.best.safetensors`); 0 without validation."""
    best_loss: float | None = None
    early_stopped: bool = False
    """True when `train.early_stop_patience` ended the run before `train.steps`."""


@dataclass
class Failed(Event):
    kind: ClassVar[str] = "failed"
    error: str
    advice: str = ""
    suggested: dict[str, Any] = field(default_factory=dict)
    """Out of memory: the settings (dotted field: value) the estimate says fit, which a resume may apply
    (`Supervisor.resume(job, settings=...)`, `jobs resume ID --with-suggested`); {} otherwise."""
    memory: dict[str, Any] = field(default_factory=dict)
    """Out of memory: the estimate in bytes (`budget`, `peak_bytes`, `fitted_bytes`); {} otherwise."""
