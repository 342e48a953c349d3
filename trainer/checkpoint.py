"""Resumable checkpoints that a kill or a full disk cannot corrupt.

    save_checkpoint(accelerator, workdir, state, keep_last=2)     # -> workdir/checkpoints/step-N/
    found = latest_checkpoint(workdir)                             # newest folder whose marker exists
    state = load_checkpoint(accelerator, found, config)            # refuses a config that breaks resuming
    accept_changes(workdir, {"train.batch_size": 1})               # a resume after out-of-memory may differ so

A checkpoint is accelerate's `save_state` (optimizer, LR scheduler, RNG states; the UNet itself is not
copied: a save hook in the loop writes only the LoRA tensors) plus `trainer_state.json` (step, epoch, data
position, config). It is written under a temporary name, fsynced, renamed, and counts only once its marker
file exists; older checkpoints are pruned only after that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.errors import TrainingError
from trainer.fileio import atomic_write_bytes, disk_error, fsync_dir

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
ACCEPTED_FILE = "accepted_changes.json"
"""In `checkpoints/`: settings changed since the checkpoints by a resume after running out of memory."""
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Settings that may change between a run and its resumption; any other change breaks resuming.
RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.keep_last", "train.log_with", "train.gpus",
                     "train.num_threads", "train.ema_on_cpu", "sample.",
                     "export.",
                     "data.cache_dir", "data.skip_bad_images", "model.allow_pickle")
# Settings a resume after running out of memory may change (what trainer.estimate.fit suggests, less what a
# checkpoint holds): they decide how much one step keeps in memory, not the LoRA layers or the optimizer state.
# Accepted only at the values `accept_changes` recorded, so a later hand edit still has to match the checkpoint.
MEMORY_CHANGES = ("train.gradient_checkpointing", "train.batch_size", "data.resolution", "model.quantize",
                  "data.shuffle_tags", "data.caption_dropout", "data.keep_tokens")
# Why some settings cannot change, said next to the change.
BREAKING_REASONS = {
    "optim.optimizer": "the checkpoint holds this optimizer's state, which another optimizer cannot load: "
                       "start a new run with the other optimizer",
    "network.train_text_encoder": "the checkpoint holds the LoRA layers and optimizer state of the models it "
                                  "trained: start a new run to train other models",
    "train.num_processes": "the data order, the global batch and the learning-rate schedule are laid out for "
                           "the number of processes: resume with the same number (lora-studio train "
                           "--num-processes N, or accelerate launch --num_processes N)",
}


@dataclass
class TrainerState:
    step: int
    micro_step: int
    epoch: int
    config: dict
    best_step: int = 0
    """Validation: the best step so far, its loss and the checks since (trainer/validation.py BestTracker)."""
    best_loss: float | None = None
    checks_since_best: int = 0


def checkpoints_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def save_checkpoint(accelerator, workdir: str | Path, state: TrainerState, keep_last: int) -> Path:
    """Write `checkpoints/step-N` atomically (temp folder, fsync, rename, marker) and prune old ones.

    Call it on every rank: accelerate's `save_state` writes each rank's RNG state (the rest on the main
    process only), then the main process alone renames, marks and prunes.
    """
    root = checkpoints_dir(workdir)
    final = root / f"step-{state.step}"
    tmp = root / f".step-{state.step}.tmp-{_attempt_token(accelerator)}"
    main = accelerator.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if main:
            _complete(tmp, final, state)
    except Exception as err:  # safetensors and torch.save report a full disk with their own error types
        shutil.rmtree(tmp, ignore_errors=True)
        failure = disk_error(err, final)
        if failure is err:
            raise
        raise failure from err
    accelerator.wait_for_everyone()
    if main:
        _prune(root, keep_last)
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # a node without shared storage: only its own RNG file is here
    return final


def _complete(tmp: Path, final: Path, state: TrainerState) -> None:
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (final / MARKER).write_text(str(state.step), encoding="utf-8")
    _fsync_tree(final)
    fsync_dir(final.parent)


def _attempt_token(accelerator) -> str:
    """One temporary-folder name per run attempt, the same on every rank: a resumed run never writes into,
    or is mistaken for, the half-written folder a killed attempt left behind."""
    token = [f"{os.getpid()}"]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(token, from_process=0)
    return token[0]


def latest_checkpoint(workdir: str | Path) -> Path | None:
    """The newest complete checkpoint; partial ones (no marker, temp names) are removed."""
    root = checkpoints_dir(workdir)
    if not root.is_dir():
        return None
    complete = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / MARKER).is_file():
            complete.append((int(match.group(1)), entry))
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    return max(complete)[1] if complete else None


def newest_complete_step(workdir: str | Path) -> int | None:
    """The step of the checkpoint a resume would continue from, found without removing anything (a view may
    look while a run writes one); None when there is none. A run killed after a checkpoint's marker but before
    its `checkpoint` event still resumes from it, so the folders are the truth, not the event log."""
    root = checkpoints_dir(workdir)
    steps = [int(match.group(1)) for entry in (root.iterdir() if root.is_dir() else ())
             if (match := _STEP_DIR.match(entry.name)) and (entry / MARKER).is_file()]
    return max(steps, default=None)


def resolve_resume(resume_from: str | Path) -> Path | None:
    """A checkpoint folder as given, or the newest complete one under a run's workdir (None: start fresh)."""
    path = Path(resume_from)
    if (path / MARKER).is_file():
        return path
    if _STEP_DIR.match(path.name):
        raise TrainingError("is not a complete checkpoint (its marker file is missing)", where=str(path),
                            fix="Resume from the run folder to use its newest complete checkpoint.")
    return latest_checkpoint(path)


def read_state(checkpoint: str | Path) -> TrainerState:
    path = Path(checkpoint) / STATE_FILE
    return TrainerState(**json.loads(path.read_text(encoding="utf-8")))


def accept_changes(workdir: str | Path, settings: Mapping[str, Any]) -> Path:
    """Record that resuming `workdir`'s checkpoints may find these MEMORY_CHANGES set to these values."""
    wrong = [key for key in settings if key not in MEMORY_CHANGES]
    if wrong:
        raise TrainingError(f"cannot change on a resume: {', '.join(wrong)}", where="accept_changes",
                            fix=f"Only these may: {', '.join(MEMORY_CHANGES)}.")
    root = checkpoints_dir(workdir)
    root.mkdir(parents=True, exist_ok=True)
    merged = {**accepted_changes(root), **settings}
    return atomic_write_bytes(root / ACCEPTED_FILE, json.dumps(merged, indent=1).encode("utf-8"))


def accepted_changes(checkpoints: str | Path) -> dict[str, Any]:
    """What `accept_changes` recorded in this `checkpoints/` folder ({} when nothing was)."""
    path = Path(checkpoints) / ACCEPTED_FILE
    if not path.is_file():
        return {}
    try:
        return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k in MEMORY_CHANGES}
    except (ValueError, AttributeError) as err:
        raise TrainingError(f"is not readable ({err})", where=str(path),
                            fix="Delete it and resume with the run's own settings, or restore it.") from err


def check_resumable(checkpoint: str | Path, config: TrainConfig) -> TrainerState:
    """The checkpoint's state; refuses with a diff if the config changed in a way resuming cannot absorb
    (memory settings changed by a resume after running out of memory are absorbed: `accept_changes`)."""
    state = read_state(checkpoint)
    changes = resume_breaking_changes(state.config, config.to_dict(), accepted_changes(Path(checkpoint).parent))
    if changes:
        raise TrainingError(
            "cannot be resumed with this config: these settings changed since the checkpoint:\n"
            + "\n".join(f"  {c}" for c in changes),
            where=str(checkpoint),
            fix="Resume with the run's own config.toml, or start a new run.",
        )
    return state


def load_checkpoint(accelerator, checkpoint: str | Path, config: TrainConfig) -> TrainerState:
    """Restore optimizer, scheduler, RNG and LoRA state; refuse with a diff if the config changed incompatibly."""
    state = check_resumable(checkpoint, config)
    accelerator.load_state(str(checkpoint))
    return state


def resume_breaking_changes(saved: dict, current: dict, accepted: Mapping[str, Any] | None = None) -> list[str]:
    """`field: old -> new` for every changed setting that resuming cannot absorb; a MEMORY_CHANGES field now
    at the value `accepted` gives it is absorbed.

    A setting the saved config lacks (the checkpoint predates it) counts as its default then: a field added to
    LoRA Studio does not stop older checkpoints from resuming unless the run now sets it otherwise."""
    changes = []
    for key, old, new in _diff(_with_defaults(saved, TrainConfig().to_dict()), current):
        if key.startswith(RESUMABLE_CHANGES):
            if key == "train.steps" and current["optim"]["lr_scheduler"] != "constant" and old != new:
                changes.append(f"{key}: {old!r} -> {new!r} (the {current['optim']['lr_scheduler']} "
                               "schedule depends on the total steps)")
            continue
        if key in MEMORY_CHANGES and key in (accepted or {}) and accepted[key] == new:
            continue
        reason = f" ({BREAKING_REASONS[key]})" if key in BREAKING_REASONS else ""
        changes.append(f"{key}: {old!r} -> {new!r}{reason}")
    return changes


def _with_defaults(saved: dict, defaults: dict) -> dict:
    out = dict(defaults)
    for key, value in saved.items():
        both_tables = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        out[key] = _with_defaults(value, defaults[key]) if both_tables else value
    return out


def _diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(
        (int(m.group(1)), e) for e in root.iterdir()
        if (m := _STEP_DIR.match(e.name)) and (e / MARKER).is_file()
    )
    for _, old in complete[:-keep_last]:
        (old / MARKER).unlink(missing_ok=True)  # un-mark first: a kill mid-delete leaves no half checkpoint
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)
