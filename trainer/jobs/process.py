"""Tell whether a recorded runner is still the same live process, and signal it.

A pid alone is not an identity: after a reboot or a long uptime the number is reused by an unrelated
process. So a job records the pid *and* the process start time (field 22 of `/proc/<pid>/stat`, in
clock ticks since boot), and a process counts as the job's runner only when both match.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    state, ticks = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(ticks)


def has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def is_alive(pid: int | None, started: int | None) -> bool:
    """True when `pid` is alive and (where /proc exists) started at `started`."""
    if not pid:
        return False
    if not has_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def kill_group(pid: int, started: int | None, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to the runner's process group (it leads its own session); False if it was already gone."""
    if not is_alive(pid, started):
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True
