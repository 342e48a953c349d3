"""Writes that a kill or a full disk cannot leave half done: temporary file, fsync, rename, fsync the folder.

    atomic_write_bytes(path, data)
    with atomic_path(path) as tmp:   # for libraries that write to a path themselves
        save_file(tensors, tmp)
"""

from __future__ import annotations

import contextlib
import errno
import os
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
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise disk_error(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def disk_error(err: OSError, path: Path) -> OSError | TrainingError:
    """Turn 'no space left' (and a file-size limit) into an error that says so and where."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return TrainingError(
            f"could not be written: the disk is full ({os.strerror(err.errno or 0)})",
            where=str(path),
            fix=f"Free space on the disk that holds {path.parent} (or point the output elsewhere) and resume.",
        )
    return err
