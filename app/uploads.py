"""Uploads: what a request to `/gradio_api/upload` may carry, and cleaning up what no dataset took.

    body = await check_upload(receive, headers, limits)   # raises UploadRefused (nothing reached gradio)
    forget_uploads(studio.upload_dir, files)               # a handler is done with its uploaded files
    sweep_uploads(studio.upload_dir)                       # at start: uploads of an earlier run

gradio limits each file's size but not the number of files in one request (its parser allows 1000, fixed)
nor their types, and it writes every part to disk while it parses. So the guard (`app/guard.py`) reads
the whole request into a spool first, counting parts, checking names and sizes as they stream, and hands
gradio only a request that passed: a refused upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

UPLOAD_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".txt", ".jsonl", ".zip", ".safetensors")
"""The only file types the studio takes: images, captions, dataset zips and LoRA files."""
SPOOL_IN_MEMORY = 4 * 1024 * 1024
"""Bytes of a request kept in memory before the spool moves to disk (under the upload folder)."""
PART_OVERHEAD = 4096
"""Bytes a multipart part may add to its file (boundary and headers), for the Content-Length check."""


class UploadRefused(Exception):
    """An upload request that breaks a limit; `status` is the HTTP answer, the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UploadLimits:
    max_files: int
    """Most files in one request (`--max-upload-files`)."""
    max_file_bytes: int
    """Largest single file (`--max-upload-mb`)."""
    spool_dir: Path
    """Where a large request waits while it is checked (the upload folder: same disk as the uploads)."""


class _PartCounter:
    """python_multipart callbacks that count files, check their names and sizes, and raise on the first fault."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.files = 0
        self.size = 0
        self.is_file = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.field = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda data, start, end: self.headers.append((data[start:end].lower(), b"")),
            "on_header_value": self.header_value,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.data,
        }

    def begin(self) -> None:
        self.headers, self.size, self.is_file = [], 0, False

    def header_value(self, data: bytes, start: int, end: int) -> None:
        if self.headers:
            name, value = self.headers[-1]
            self.headers[-1] = (name, value + data[start:end])

    def headers_finished(self) -> None:
        disposition = next((v for k, v in self.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"filename" not in options:
            return
        self.is_file = True
        self.files += 1
        limit = self.limits.max_files
        if self.files > limit:
            raise UploadRefused(
                413,
                f"more than {limit} files in one upload; upload at most {limit} at a time, or pack them in a zip",
            )
        name = options[b"filename"].decode("utf-8", "replace")
        if not name.lower().endswith(UPLOAD_EXTS):
            raise UploadRefused(
                415,
                f"{Path(name).name!r} is not a file the studio takes; upload images (PNG, JPEG, WebP), "
                ".txt/.jsonl captions, a .zip or a LoRA .safetensors",
            )

    def data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.is_file and self.size > self.limits.max_file_bytes:
            raise UploadRefused(
                413,
                f"a file is larger than {self.limits.max_file_bytes // (1024 * 1024)} MB; "
                "start the studio with a larger --max-upload-mb, or upload a smaller file",
            )


async def check_upload(
    receive: Callable[[], Awaitable[dict[str, Any]]], headers: Any, limits: UploadLimits
) -> tempfile.SpooledTemporaryFile:
    """Read the whole upload request into a spool, refusing it at the first broken limit."""
    content_type, params = parse_options_header(headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(400, "an upload must be multipart/form-data with a boundary")
    length = headers.get("content-length")
    most = limits.max_files * (limits.max_file_bytes + PART_OVERHEAD)
    if length and length.isdigit() and int(length) > most:
        raise UploadRefused(413, f"the upload is {int(length)} bytes, more than {limits.max_files} files can be")
    counter = _PartCounter(limits)
    parser = MultipartParser(boundary, counter.callbacks())
    limits.spool_dir.mkdir(parents=True, exist_ok=True)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=limits.spool_dir)  # noqa: SIM115
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UploadRefused(400, "the upload was cut off")
            chunk = message.get("body", b"")
            try:
                parser.write(chunk)
            except MultipartParseError as err:
                raise UploadRefused(400, f"the upload is not valid multipart data ({err})") from err
            spool.write(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def replay(spool: tempfile.SpooledTemporaryFile, receive: Callable[[], Awaitable[dict[str, Any]]]):
    """An ASGI `receive` that hands gradio the checked request from the spool, then the real channel."""
    done = False

    async def replayed() -> dict[str, Any]:
        nonlocal done
        if done:
            return await receive()
        chunk = spool.read(1024 * 1024)
        more = bool(chunk) and spool.tell() < _size(spool)
        if not more:
            done = True
            spool.close()
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replayed


def _size(spool: tempfile.SpooledTemporaryFile) -> int:
    here = spool.tell()
    spool.seek(0, 2)
    end = spool.tell()
    spool.seek(here)
    return end


def forget_uploads(upload_dir: Path, files: Iterable[Any]) -> int:
    """Delete uploaded files a handler has finished with (and their hash folders); returns how many.

    Only files inside `upload_dir` are touched: a path from anywhere else is left alone.
    """
    root = upload_dir.resolve()
    removed = 0
    for item in files or []:
        path = Path(str(getattr(item, "path", item))).resolve()
        if root not in path.parents or not path.is_file():
            continue
        path.unlink(missing_ok=True)
        removed += 1
        with contextlib.suppress(OSError):  # the folder gradio made for this upload, when now empty
            if path.parent != root:
                path.parent.rmdir()
    return removed


def sweep_uploads(upload_dir: Path) -> int:
    """Empty the upload folder at start: nothing there belongs to a live session. Returns entries removed."""
    if not upload_dir.is_dir():
        return 0
    removed = 0
    for entry in upload_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
