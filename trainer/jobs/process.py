"""Tell whether a recorded runner is still the same live process, and signal it.

A pid alone is not an identity: after a reboot or a long uptime the number is reused by an unrelated
process. So a job records the pid *and* the process start time (field 22 of `/proc/<pid>/stat`, in
clock ticks since boot), and a process counts as the job's runner only when both match.

A runner this process started is its child: when it exits it stays a zombie until someone waits for
it. `adopt` gives each child a daemon thread that waits for it, so a server that started runners
never collects zombies, whether or not anything looks at the job again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
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


def adopt(child: subprocess.Popen) -> threading.Thread:
    """Reap `child` as soon as it exits (a thread blocked in its wait), so it never lingers as a zombie."""
    waiter = threading.Thread(target=child.wait, name=f"reap-{child.pid}", daemon=True)
    waiter.start()
    return waiter


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
