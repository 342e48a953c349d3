"""Writes that a kill or a full disk cannot leave half done: temporary file, fsync, rename, fsync the folder.

    atomic_write_bytes(path, data)
    with atomic_path(path) as tmp:   # for libraries that write to a path themselves
        save_file(tensors, tmp)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainer.errors import TrainingError


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        failure = disk_error(err, path)
        if failure is err:
            raise
        raise failure from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def disk_error(err: Exception, path: Path) -> Exception:
    """Turn 'no space left' (and a file-size limit) into an error that says so and where; others pass through."""
    code = _disk_errno(err, path)
    if code is not None:
        return TrainingError(
            f"could not be written: the disk is full ({os.strerror(code)})",
            where=str(path),
            fix=f"Free space on the disk that holds {path.parent} (or point the output elsewhere) and resume.",
        )
    return err


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_errno(err: Exception, path: Path) -> int | None:
    """The errno of a failed write when it means "no room", else None.

    safetensors (a Rust writer) and torch.save (a C++ zip writer) raise their own error types, with the
    OS error only in the text or not at all; so their failures are also checked against the disk itself.
    """
    if isinstance(err, OSError):
        return err.errno if err.errno in _DISK_ERRNOS else None
    text = str(err)
    found = re.search(r"os error (\d+)", text)
    if found and int(found.group(1)) in _DISK_ERRNOS:
        return int(found.group(1))
    for code in _DISK_ERRNOS:
        if os.strerror(code) in text:
            return code
    if not isinstance(err, RuntimeError):  # torch.save's "unexpected pos 704 vs 598" names no cause
        return None
    with contextlib.suppress(OSError):
        stats = os.statvfs(path.parent if path.parent.exists() else path.parent.parent)
        if stats.f_bavail * stats.f_frsize < 16 * 1024 * 1024:
            return errno.ENOSPC
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG  # a file-size limit (ulimit -f) stops writes like a full disk
    return None
