"""The job log's lines, written for people: one sentence-like line per event record (events.jsonl keeps the data).

    describe({"kind": "progress", "step": 120, "total_steps": 300, "loss": 0.0841, "it_per_s": 5.2, "eta_s": 34})
    # 'step 120/300 · loss 0.0841 · 5.2 it/s · ETA 0:34'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def describe(record: dict[str, Any]) -> str:
    """A human line for runner.log from an event record (any kind; unknown kinds list their fields)."""
    kind = record.get("kind")
    line = _LINES.get(kind)
    if line is not None:
        try:
            return line(record)
        except (KeyError, TypeError, ValueError):
            pass  # a record from an older or newer LoRA Studio: fall back to its fields
    fields = ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("kind", "time"))
    return f"{kind}: {fields}" if fields else str(kind)


def clock(seconds: float) -> str:
    """0:34, 12:05, 1:02:03."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _progress(r: dict) -> str:
    parts = [f"step {r['step']}/{r['total_steps']}"]
    if isinstance(r.get("loss"), (int, float)):
        parts.append(f"loss {r['loss']:.4g}")
    if isinstance(r.get("it_per_s"), (int, float)):
        parts.append(f"{r['it_per_s']:.2g} it/s" if r["it_per_s"] < 10 else f"{r['it_per_s']:.0f} it/s")
    if isinstance(r.get("eta_s"), (int, float)):
        parts.append(f"ETA {clock(r['eta_s'])}")
    return " · ".join(parts)


def _started(r: dict) -> str:
    start = f"from step {r['start_step']}" if r.get("start_step") else "from scratch"
    precision = r.get("mixed_precision") or "no"
    precision = "float32" if precision == "no" else precision
    cached = [name for name, on in (("latents", r.get("cached_latents")), ("text", r.get("cached_text"))) if on]
    line = (f"training {r['total_steps']} steps on {r.get('device', '?')} ({precision}), {start}; "
            f"{r.get('num_images', '?')} images")
    if cached:
        line += f", {' and '.join(cached)} cached"
    if r.get("skipped"):
        line += f"; skipped {len(r['skipped'])} bad image(s): {', '.join(Path(p).name for p in r['skipped'][:5])}"
    return line


def _done(r: dict) -> str:
    how = "stopped early (no validation gain)" if r.get("early_stopped") else "stopped" if r.get("stopped") \
        else "finished"
    line = f"{how} at step {r['step']}"
    if r.get("best_step"):
        line += f"; best step {r['best_step']}"
    outputs = [Path(p).name for p in r.get("outputs") or []]
    return line + (f"; wrote {', '.join(outputs)}" if outputs else "")


def _failed(r: dict) -> str:
    line = f"failed: {r['error']}"
    if r.get("advice"):
        line += f" (fix: {r['advice']})"
    if r.get("suggested"):
        line += "; settings that fit: " + ", ".join(f"{k} = {v!r}" for k, v in r["suggested"].items())
    return line


def _validation(r: dict) -> str:
    return (f"validation loss {r['loss']:.4g} at step {r['step']} "
            f"(best {r['best_loss']:.4g} at step {r['best_step']})")


def _queued(r: dict) -> str:
    changed = r.get("changed") or {}
    line = "queued again to resume" if r.get("resume") else "queued"
    if changed:
        line += " with " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
    return line


_LINES = {
    "progress": _progress,
    "started": _started,
    "done": _done,
    "failed": _failed,
    "validation": _validation,
    "queued": _queued,
    "checkpoint": lambda r: f"checkpoint saved at step {r['step']} ({Path(r['path']).name})",
    "sample": lambda r: f"{len(r['paths'])} sample image(s) at step {r['step']}",
    "stopped": lambda r: f"stopped at step {r['step']}; resume continues from the newest checkpoint",
    "class_images": lambda r: f"{r['images']} class images from {r['folder']}"
                              + (f" ({r['generated']} drawn now)" if r.get("generated") else ""),
    "runner": lambda r: f"runner started (pid {r['pid']})"
                        + (f", resuming from {Path(r['resume_from']).name}" if r.get("resume_from") else ""),
}
