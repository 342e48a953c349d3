"""What a run that ran out of accelerator memory should change: the estimate and the settings that would fit.

    failure = out_of_memory_error(config, device)   # a TrainingError whose fix names the settings to set

The loop raises it from its `torch.cuda.OutOfMemoryError` handler after letting go of the step's tensors,
so the process can report (and the next job on the GPU starts) with the memory free.
"""

from __future__ import annotations

import gc
import logging

import torch

from trainer.config import TrainConfig
from trainer.errors import StudioError, TrainingError

FALLBACK_FIX = ("Lower train.batch_size or data.resolution, or set train.gradient_checkpointing = true; "
                "`lora-studio estimate --config <run>/config.toml --fit <your GPU's memory>` says which fits.")


def release_memory() -> None:
    """Drop what the failed step left (frames of the traceback are gone by now) and the allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_budget(device) -> int | None:
    """Total memory of a CUDA `device` (what the run had to fit in); None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory


def oom_advice(config: TrainConfig, budget: int | None) -> str:
    """The run's estimate and, with a `budget`, the first settings that fit it (see `trainer.estimate.fit`)."""
    from trainer.estimate import estimate_step, fit_settings, format_bytes

    if budget is None:
        est = estimate_step(config)
        return (f"The estimated peak of one step is {format_bytes(est.peak_bytes)} "
                f"({', '.join(f'{k} {format_bytes(v)}' for k, v in est.parts.items())}). " + FALLBACK_FIX)
    found = fit_settings(config, budget)
    head = (f"The estimated peak of one step is {format_bytes(found.original.peak_bytes)} on a "
            f"{format_bytes(budget)} device")
    if found.changes is None:
        return head + "; none of the cheaper settings fits it (use a larger GPU or a smaller base model)."
    if not found.changes:
        return head + ", which should fit: other processes may hold GPU memory; free it and resume."
    return (head + f". To fit ({format_bytes(found.fitted.peak_bytes)}) set: " + "; ".join(found.changes)
            + ", then resume from the last checkpoint.")


def out_of_memory_error(config: TrainConfig, device) -> TrainingError:
    """The TrainingError a run that ran out of memory fails with; its fix comes from the estimate."""
    release_memory()
    try:
        fix = oom_advice(config, device_budget(device))
    except (StudioError, RuntimeError, ValueError, TypeError) as err:  # the estimate must not hide the OOM
        logging.getLogger(__name__).warning("no memory estimate for the out-of-memory report: %s", err)
        fix = FALLBACK_FIX
    return TrainingError("ran out of GPU memory", fix=fix)


def accelerator_memory() -> dict | None:
    """The first CUDA device's name and free / total bytes (for the UI), or None without one."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"name": torch.cuda.get_device_name(), "free": free, "total": total}
