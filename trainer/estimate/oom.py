"""What a run that ran out of accelerator memory should change: the estimate and the settings that would fit.

    failure = out_of_memory_error(config, device)   # a TrainingError whose fix names the settings to set
    failure.settings                                 # {"train.gradient_checkpointing": True}: what a resume applies

The loop raises it from its `torch.cuda.OutOfMemoryError` handler after letting go of the step's tensors,
so the process can report (and the next job on the GPU starts) with the memory free.
"""

from __future__ import annotations

import gc
import logging
import os

import torch

from trainer.checkpoint import MEMORY_CHANGES
from trainer.config import TrainConfig
from trainer.errors import OutOfMemory, StudioError
from trainer.estimate.fit import FitResult, fit_settings, format_bytes, parse_size
from trainer.estimate.step import estimate_step

BUDGET_ENV = "LORA_STUDIO_GPU_MEMORY"
"""The memory a run must fit, for the out-of-memory advice (see `device_budget`)."""

FALLBACK_FIX = ("Lower train.batch_size or data.resolution, or set train.gradient_checkpointing = true; "
                "`lora-studio estimate --config <run>/config.toml --fit <your GPU's memory>` says which fits.")


def release_memory() -> None:
    """Drop what the failed step left (frames of the traceback are gone by now) and the allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_budget(device) -> int | None:
    """The memory a run on `device` must fit: $LORA_STUDIO_GPU_MEMORY when set (`10GB`: the share of a GPU
    that other processes use too; on a CPU it stands in for the GPU a run is meant for, which is how the tests
    reach the advice), else a CUDA device's total memory; None otherwise."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            return parse_size(text)
        except StudioError as err:
            raise StudioError("is not a memory size", where=f"{BUDGET_ENV}={text!r}", fix=err.fix) from err
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory


def fit_for_resume(config: TrainConfig, budget: int) -> tuple[FitResult, bool]:
    """The first settings that fit `budget` among those a resume may change (checkpoint.MEMORY_CHANGES), and
    True; when none of those fits, the full search (8-bit Adam, no text encoder training…) and False."""
    found = fit_settings(config, budget, only=MEMORY_CHANGES)
    if found.changes is None:
        full = fit_settings(config, budget)
        if full.changes is not None:
            return full, False
    return found, True


def oom_advice(config: TrainConfig, budget: int | None) -> str:
    """The run's estimate and, with a `budget`, the first settings that fit it (see `trainer.estimate.fit`)."""
    return _report(config, budget)[0]


def _report(config: TrainConfig, budget: int | None) -> tuple[str, dict, dict]:
    """(advice, settings a resume may apply, estimate in bytes)."""
    if budget is None:
        est = estimate_step(config)
        return (f"The estimated peak of one step is {format_bytes(est.peak_bytes)} "
                f"({', '.join(f'{k} {format_bytes(v)}' for k, v in est.parts.items())}). " + FALLBACK_FIX,
                {}, {"peak_bytes": est.peak_bytes})
    found, resumable = fit_for_resume(config, budget)
    estimate = {"budget": budget, "peak_bytes": found.original.peak_bytes,
                "fitted_bytes": found.fitted.peak_bytes if found.fitted else None}
    head = (f"The estimated peak of one step is {format_bytes(found.original.peak_bytes)} on a "
            f"{format_bytes(budget)} device")
    if found.changes is None:
        return head + "; none of the cheaper settings fits it (use a larger GPU or a smaller base model).", {}, estimate
    if not found.changes:
        return head + ", which should fit: other processes may hold GPU memory; free it and resume.", {}, estimate
    fits = f"({format_bytes(found.fitted.peak_bytes)}) "
    if not resumable:
        return (head + ". No setting a resume may change fits; a new run " + fits + "with: "
                + "; ".join(found.changes) + "."), {}, estimate
    return (head + ". To fit " + fits + "set: " + "; ".join(found.changes) + ", then resume from the last "
            "checkpoint (`lora-studio jobs resume <id> --with-suggested`, or the Train tab's Resume with these "
            "settings)."), found.settings, estimate


def out_of_memory_error(config: TrainConfig, device) -> OutOfMemory:
    """The error a run that ran out of memory fails with: the estimate's advice, and the settings that would fit
    as dotted fields (`settings`, what `Supervisor.resume(job, settings=...)` applies)."""
    release_memory()
    try:
        fix, settings, estimate = _report(config, device_budget(device))
    except (StudioError, RuntimeError, ValueError, TypeError) as err:  # the estimate must not hide the OOM
        logging.getLogger(__name__).warning("no memory estimate for the out-of-memory report: %s", err)
        fix, settings, estimate = FALLBACK_FIX, {}, {}
    return OutOfMemory("ran out of GPU memory", fix=fix, settings=settings, estimate=estimate)


def accelerator_memory() -> dict | None:
    """The first CUDA device's name and free / total bytes (for the UI), or None without one."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"name": torch.cuda.get_device_name(), "free": free, "total": total}
