"""What the Train tab's live view draws for one job, read from its events (`events.jsonl`) and the job store.

    loss_frame(events)                  # raw and smoothed training loss, validation loss: one row per step
    sample_gallery(events, job_dir)     # every sample step's images, captioned `step 40 · a red square`
    downloads_note(job, events)         # "Files from step 200 of 300." and the library name they got

Plain data in, plain data out (no gradio): `app/train_tab.py` lays the values into its components.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from trainer.errors import StudioError

SMOOTHING = 0.9
"""Weight of the loss curve's exponential moving average: TensorBoard's default smoothing."""
LOSS_SERIES = {"training (raw)": "#c7d2fe", "training (smoothed)": "#4338ca", "validation": "#ea580c"}
"""The loss plot's lines and their colours (LinePlot's `color_map`): the raw loss faint, under its average."""
SAMPLE_STEPS = 12
"""Sample steps the gallery shows (the newest): a long run must not send hundreds of images every tick."""
MIN_COLUMNS = 4
"""Fewest gallery columns: with one or two prompts a row holds several whole steps, not one huge image."""


def per_step(events: list[dict], kind: str, key: str) -> pd.DataFrame:
    """`step` and `key` of every `kind` event that has one, ordered by step; a step a resumed run trained
    again keeps its newer value (a force-stopped run repeats the steps after its last checkpoint)."""
    rows = [(e["step"], e[key]) for e in events
            if e.get("kind") == kind and e.get(key) is not None and e.get("step") is not None]
    # typed even when empty: a gradio plot keeps the axis types of the first frame it drew
    frame = pd.DataFrame(rows, columns=["step", key]).astype({"step": "int64", key: "float64"})
    return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


def loss_frame(events: list[dict]) -> pd.DataFrame:
    """The loss plot's rows (`step`, `loss`, `series`): the training loss of every step, its exponential
    moving average, and the validation loss at each check; the plot draws one line per series.

    A series with no values yet gets one empty row (no step, no loss: nothing is drawn): gradio's plot builds
    its colour scale from the series of the first frame it draws and keeps it for later frames, so a series
    missing then (every one, while a job is queued) would be drawn in no colour at all."""
    raw = per_step(events, "progress", "loss")
    # pandas' adjusted EWM is TensorBoard's debiased one: sum(w^i * x[t-i]) / sum(w^i), so the first steps
    # are not pulled towards 0
    smoothed = raw.assign(loss=raw["loss"].ewm(alpha=1 - SMOOTHING, adjust=True).mean())
    validation = per_step(events, "validation", "loss")
    empty = pd.DataFrame({"step": pd.array([None], dtype="Int64"), "loss": [math.nan]})
    parts = [(frame if len(frame) else empty).astype({"step": "Int64"}).assign(series=name)
             for frame, name in zip((raw, smoothed, validation), LOSS_SERIES, strict=True)]
    return pd.concat(parts, ignore_index=True)


def lr_frame(events: list[dict]) -> pd.DataFrame:
    """The learning-rate plot's rows (`step`, `lr`): its scale is far from the loss's, so it has its own plot."""
    return per_step(events, "progress", "lr")


def sample_gallery(events: list[dict], job_dir: str | Path) -> tuple[list[tuple[str, str]], int]:
    """The images of the newest SAMPLE_STEPS sample steps, ordered by step and then prompt (newest last),
    each captioned `step 40 · <prompt>`; and the gallery's columns: a multiple of the prompts per step, so
    each row holds whole steps and every column shows one prompt."""
    by_step = {e["step"]: e for e in events if e.get("kind") == "sample" and e.get("paths")}  # newest wins
    steps = sorted(by_step)[-SAMPLE_STEPS:]
    configured: list[str] | None = None
    items = []
    for step in steps:
        paths = by_step[step]["paths"]
        prompts = by_step[step].get("prompts") or []  # runs before sample events named their prompts: the config's
        if len(prompts) != len(paths):
            configured = config_prompts(job_dir) if configured is None else configured
            prompts = configured if len(configured) == len(paths) else [f"prompt {i + 1}" for i in range(len(paths))]
        items += [(path, f"step {step} · {prompt}") for path, prompt in zip(paths, prompts, strict=True)
                  if Path(path).is_file()]
    per_row = len(by_step[steps[-1]]["paths"]) if steps else 1
    return items, per_row * math.ceil(MIN_COLUMNS / per_row)


def config_prompts(job_dir: str | Path) -> list[str]:
    """`sample.prompts` of the job's config.toml; [] when it has none (the first caption) or is unreadable."""
    from trainer.config import load_config

    try:
        return list(load_config(Path(job_dir) / "config.toml").sample.prompts)
    except (StudioError, OSError):
        return []


def downloads_note(job: dict[str, Any], events: list[dict]) -> str:
    """The line under Downloads: which step the files are from, how far the run got beyond them (a force stop
    kills a run after its last export), and the name the LoRA was published under."""
    exported = next((e for e in reversed(events) if e.get("kind") == "done" and e.get("outputs")), None)
    reached = job.get("step") or 0
    lines = []
    if exported is None:
        if reached and how_it_ended(job, events):
            lines.append(f"No files yet: the run reached step {reached} before it {how_it_ended(job, events)} "
                         f"({resume_clause(job['dir'], reached)}).")
    elif reached <= exported["step"]:
        lines.append(f"Files from step {exported['step']} of {job.get('total_steps') or '?'}.")
    elif job["status"] in ("queued", "running"):
        lines.append(f"Files from step {exported['step']}; the run is at step {reached} now and writes new ones "
                     "when it finishes or is stopped.")
    else:
        lines.append(f"Files from step {exported['step']}; the run reached step {reached} before it "
                     f"{how_it_ended(job, events)} ({resume_clause(job['dir'], reached)}).")
    library, name = job.get("library_name"), job.get("name") or ""
    if library:
        taken = library != name and re.fullmatch(rf"{re.escape(name)}-\d+", library)  # library.py `_claim_stem`
        lines.append(f"Published to the library as **{library}**" + (f" (the name {name} was taken)." if taken
                                                                       else "."))
    return "\n\n".join(lines)


def how_it_ended(job: dict[str, Any], events: list[dict]) -> str:
    """'was force-stopped', 'was stopped', 'was interrupted' or 'failed'; '' for a job that is not over early."""
    last = next((e for e in reversed(events) if e.get("kind") in ("done", "stopped", "interrupted", "queued")), {})
    if job["status"] == "stopped":
        return "was force-stopped" if last.get("kind") == "stopped" and last.get("forced") else "was stopped"
    return {"interrupted": "was interrupted", "failed": "failed"}.get(job["status"], "")


def resume_clause(job_dir: str | Path, reached: int) -> str:
    """Where Resume continues from (the newest complete checkpoint on disk), and whether it keeps the progress
    up to step `reached`."""
    from trainer.checkpoint import newest_complete_step

    saved = newest_complete_step(job_dir)
    if saved is None:
        return "it saved no checkpoint: Resume starts over"
    if saved >= reached:
        return "its last checkpoint keeps that progress: Resume continues from it"
    return f"its last checkpoint is from step {saved}: Resume continues from there"
