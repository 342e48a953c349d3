"""A job's event log (`events.jsonl`, one JSON object a line) and its heartbeat file.

    log = EventLog(files.events)
    log.write({"kind": "progress", "step": 3, "loss": 0.12})
    read_events(files.events, since=0)   # -> [{"kind": "progress", "time": ..., "step": 3, ...}]

The runner is the only writer; the supervisor, the CLI and the web UI only read. A runner killed
mid-line leaves a partial last line: readers ignore a line until its newline is written, and a
writer that finds one starts on a fresh line, so one torn line never hides the events after it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Appends events as JSON lines, each with a single `write` so readers never see half an event."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
            if torn:
                self._append(b"\n")

    def write(self, event: dict[str, Any]) -> dict[str, Any]:
        record = finite({"time": round(time.time(), 3), **event})
        line = json.dumps(record, default=str, allow_nan=False) + "\n"
        self._append(line.encode("utf-8"))
        return record

    def _append(self, data: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def finite(value: Any) -> Any:
    """NaN and infinities become None: JSON has no spelling for them, and readers would choke on `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def read_events(path: Path, since: int = 0) -> list[dict[str, Any]]:
    """The complete events from index `since` on (the index counts complete, readable events)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    # The piece after the last newline is still being written.
    return _parse(data.split(b"\n")[:-1])[max(since, 0):]


def last_event(events: list[dict[str, Any]], *kinds: str) -> dict[str, Any] | None:
    for event in reversed(events):
        if event.get("kind") in kinds:
            return event
    return None


class Heartbeat:
    """Touches a file every `interval` seconds from a daemon thread; its mtime says the runner is alive.

    Touching (utime) needs no free space, so a full disk does not stop the heartbeat.
    """

    def __init__(self, path: Path, interval: float = 2.0):
        self.path = Path(path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.path.touch()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            # A missing or unwritable heartbeat only makes the job look idle; it must not kill it.
            with contextlib.suppress(OSError):
                os.utime(self.path)


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the last heartbeat, or None when there never was one."""
    try:
        return max(0.0, time.time() - Path(path).stat().st_mtime)
    except FileNotFoundError:
        return None


def tail_events(path: Path, max_bytes: int = 64 * 1024) -> list[dict[str, Any]]:
    """The complete events in the last `max_bytes` of the log (enough for the latest progress)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]
    return _parse(lines[1:] if size > max_bytes else lines)  # a cut first line starts mid-event


def _parse(lines: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if isinstance(event, dict):
            events.append(event)
    return events
