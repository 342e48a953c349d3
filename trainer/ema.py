"""An exponential moving average (EMA) of the LoRA weights (`train.ema_decay`), exported as the LoRA when on.

    ema = LoraEMA.build(accelerator, base, params, config)   # None when train.ema_decay is 0
    ema.update()                   # after each optimizer step (the sync steps of gradient accumulation)
    with swapped_in(ema):          # the EMA weights in the live LoRA layers; the trained ones back after
        export_lora(...)

The averaging is diffusers' `EMAModel` (its shadow copies, store/copy_to/restore and decay schedule): the first
update copies the weights, then the decay ramps as n/(n+9) at update n up to `train.ema_decay`, so a short run
is not held back by the zero-initialised start. Samples, the validation loss and the best LoRA use the EMA
weights (the LoRA a user gets is the one they are shown and scored on); training itself never sees them.

Every rank holds the same LoRA after DDP's all-reduce, so every rank keeps the same average; only the main
process writes it, as `ema.safetensors` in each checkpoint (the shadow tensors named by their parameter, the
update count in the metadata), and a resumed run continues it bit for bit.

Written by hand here, on top of `EMAModel`, because it has no way to: (1) keep the average on the CPU without
accelerator memory (it steps shadow and live tensors on one device; diffusers' scripts move the shadow to the GPU
for each step under `--offload_ema`), so with `train.ema_on_cpu` it is stepped on host copies of the LoRA
tensors; (2) checkpoint by name in safetensors (accelerate's `register_for_checkpointing` pickles it by position
into `custom_checkpoint_N.pkl`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.errors import TrainingError

EMA_FILE = "ema.safetensors"
STEP_KEY = "optimization_step"


class LoraEMA:
    """The EMA of the named LoRA tensors `params`; the copy lives on the CPU when `on_cpu`."""

    def __init__(self, names: list[str], params: list[torch.nn.Parameter], decay: float, on_cpu: bool):
        self.names, self.params, self.on_cpu = names, params, on_cpu
        # With the copy on the CPU: host buffers the LoRA is copied into each step (pinned beside a GPU), marked
        # as trained, which is how EMAModel tells averaged tensors from frozen ones it just copies.
        pin = on_cpu and torch.cuda.is_available()
        self._host = [torch.empty(p.shape, dtype=p.dtype, pin_memory=pin).requires_grad_() for p in params] \
            if on_cpu else []
        self.average = EMAModel(self._live(), decay=decay, foreach=True)

    @classmethod
    def build(cls, accelerator, base, params: dict[str, list[torch.nn.Parameter]], config) -> LoraEMA | None:
        """The EMA of every trained LoRA tensor (UNet and text encoders), its checkpoint hooks registered;
        None when `train.ema_decay` is 0."""
        if not config.train.ema_decay:
            return None
        names, tensors = [], []
        for component, group in params.items():
            wanted = {id(p) for p in group}
            for name, p in getattr(base.pipe, component).named_parameters():
                if id(p) in wanted:
                    names.append(f"{component}.{name}")
                    tensors.append(p)
        ema = cls(names, tensors, config.train.ema_decay, config.train.ema_on_cpu)
        ema.register_hooks(accelerator)
        return ema

    @torch.no_grad()
    def _live(self) -> list[torch.Tensor]:
        """The tensors the average steps towards: the parameters, or their copies in the host buffers."""
        if not self.on_cpu:
            return self.params
        for host, p in zip(self._host, self.params, strict=True):
            host.copy_(p.detach())  # synchronous: the step that follows must not change it mid-copy
        return self._host

    def update(self) -> None:
        self.average.step(self._live())

    @property
    def updates(self) -> int:
        return self.average.optimization_step

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by parameter name (`unet.….lora_A.default.weight`), on the CPU."""
        return {name: t.detach().to("cpu").contiguous() for name, t in zip(self.names, self.average.shadow_params,
                                                                          strict=True)}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / EMA_FILE
        save_file(self.tensors(), str(path), metadata={"format": "pt", STEP_KEY: str(self.updates),
                                                        "decay": repr(self.average.decay)})
        return path

    def load(self, folder: str | Path) -> None:
        """Restore the average and its update count from a checkpoint's `ema.safetensors`."""
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise TrainingError(f"has no {EMA_FILE}, so its EMA cannot be resumed", where=str(folder),
                                fix="Resume with the config the run was saved with (train.ema_decay as it was).")
        with safe_open(str(path), "pt") as handle:
            saved = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
            step = int(handle.metadata()[STEP_KEY])
        if sorted(saved) != sorted(self.names):
            missing = sorted(set(self.names) - set(saved))[:3]
            raise TrainingError(f"holds the EMA of other LoRA tensors than this run trains (missing {missing})",
                                where=str(path), fix="Resume with the run's own config.toml.")
        device = "cpu" if self.on_cpu else None
        shadow = [saved[name].to(device or p.device, p.dtype) for name, p in zip(self.names, self.params,
                                                                                   strict=True)]
        self.average.load_state_dict({"optimization_step": step, "shadow_params": shadow})

    def register_hooks(self, accelerator) -> None:
        """Save and load the average with accelerate's `save_state`/`load_state` (the main process writes)."""
        def save_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                self.save(output_dir)

        def load_hook(models, input_dir):
            self.load(input_dir)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)


@contextlib.contextmanager
def swapped_in(ema: LoraEMA | None) -> Iterator[None]:
    """Within the block the LoRA layers hold the EMA weights (nothing changes when `ema` is None); the trained
    weights are put back exactly after it (EMAModel's store/copy_to/restore)."""
    if ema is None:
        yield
        return
    ema.average.store(ema.params)
    ema.average.copy_to(ema.params)
    try:
        yield
    finally:
        ema.average.restore(ema.params)


def ema_metadata(config) -> dict[str, str]:
    """What an exported file says about its EMA: `lora_studio_ema_decay` (absent when EMA is off)."""
    return {"lora_studio_ema_decay": repr(config.train.ema_decay)} if config.train.ema_decay else {}


def keep_average(ema: LoraEMA | None) -> None:
    """Training is over: the LoRA layers take the EMA weights for good (what is exported and reported)."""
    if ema is not None:
        ema.average.copy_to(ema.params)
