"""The studio's gatekeeper: an ASGI middleware in front of every gradio route.

    app_kwargs = {"middleware": [Middleware(Guard, settings=GuardSettings(home=..., names=[...], ...))]}

It refuses, before gradio sees the request:
- a Host header that is not the studio's own (DNS rebinding: a page on `attacker.example` that resolves
  to 127.0.0.1 would otherwise read the studio's files);
- a browser request from another origin (another site, another port, a `null` origin), so no page the
  user visits can upload, train or delete;
- a file-route path that resolves (links followed) outside `<home>` and the upload folder, or to the job
  database under any spelling (gradio lower-cases the path before its own block check, so a link called
  `DB.png` to `studio.sqlite` got through);
- an upload with too many files, a file too large, or a type the studio does not take (`app/uploads.py`);
- a login from an address that failed too often in the last minute (HTTP 429).
Files it lets through are served with `X-Content-Type-Options: nosniff` and a sandboxing CSP, and anything
but a PNG, JPEG or WebP image as an attachment, so no uploaded page or SVG runs on the studio's origin.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from app.security import host_allowed, same_origin
from app.uploads import UploadLimits, UploadRefused, check_upload, replay

FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
INLINE_TYPES = (b"image/png", b"image/jpeg", b"image/webp")
"""Served inline (the gallery shows them); everything else is a download."""
FILE_CSP = b"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
DB_NAMES = ("studio.sqlite", "studio.sqlite-wal", "studio.sqlite-shm", "studio.sqlite-journal")
LOGIN_FAILURES = 5
"""Failed logins from one address within `LOGIN_WINDOW_S` before it is refused for the rest of the window."""
LOGIN_WINDOW_S = 60.0


@dataclass
class GuardSettings:
    home: Path
    """`<home>`: the only folder files are served from (with the upload folder, when it is elsewhere)."""
    upload_dir: Path
    names: list[str] = field(default_factory=list)
    """Host names that are the studio's own besides IP addresses and localhost."""
    proxied: list[str] = field(default_factory=list)
    """`--allowed-host` names: also accepted as a browser Origin (a reverse proxy in front)."""
    max_files: int = 1000
    max_file_bytes: int = 200 * 1024 * 1024


class Guard:
    """ASGI middleware; see the module docstring for what it refuses."""

    def __init__(self, app: Any, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self.roots = [settings.home.resolve(), settings.upload_dir.resolve()]
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self._refuse_request(scope, headers)
        if refusal is None and scope["type"] == "http":
            return await self._http(scope, receive, send, headers)
        if refusal is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        return await PlainTextResponse(refusal[1], status_code=refusal[0])(scope, receive, send)

    def _refuse_request(self, scope: dict, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not host_allowed(host, self.settings.names + self.settings.proxied):
            return 403, (
                f"Host {host!r} is not an address of this studio. Open it by its IP address or localhost, "
                "or start it with --allowed-host NAME for a name you trust."
            )
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host, self.settings.proxied):
            return 403, f"requests from {origin!r} are refused: only the studio's own pages may use it."
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site requests are refused: only the studio's own pages may use it."
        path = scope.get("path", "")
        for route in FILE_ROUTES:
            if path.startswith(route):
                return self._refuse_file(path[len(route) - (route == FILE_ROUTES[1]) :])
        return None

    def _refuse_file(self, raw: str) -> tuple[int, str] | None:
        """Refuse a served path unless it resolves inside `<home>` (or the upload folder) and is not the job
        database; the path is compared as the file system sees it, after every link is followed."""
        text = unquote(raw)
        if "://" in text:
            return 403, "the studio does not fetch URLs"
        path = Path(text if os.path.isabs(text) else os.path.join(os.getcwd(), text))
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return 403, "file not allowed"
        if not any(real == root or root in real.parents for root in self.roots):
            return 403, "file not allowed: only files under the studio's home are served"
        home = self.roots[0]
        for name in DB_NAMES:
            db = home / name
            if real.name.lower() == name or (db.exists() and os.path.samefile(real, db)):
                return 403, "file not allowed: the job database is never served"
        return None

    async def _http(self, scope: dict, receive: Any, send: Any, headers: Headers) -> None:
        path, method = scope.get("path", ""), scope.get("method", "")
        if path.startswith(FILE_ROUTES):
            return await self.app(scope, receive, _file_headers(send))
        if method == "POST" and path.rstrip("/") == "/gradio_api/upload":
            limits = UploadLimits(self.settings.max_files, self.settings.max_file_bytes, self.roots[1])
            try:
                spool = await check_upload(receive, headers, limits)
            except UploadRefused as err:
                return await PlainTextResponse(str(err), status_code=err.status)(scope, receive, send)
            return await self.app(scope, replay(spool, receive), send)
        if method == "POST" and path.rstrip("/") == "/login":
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        """Count failed logins per client address; past the limit, answer 429 until the window passes."""
        client = (scope.get("client") or ("?", 0))[0]
        now = time.monotonic()
        recent = self.failures.get(client, deque())
        while recent and now - recent[0] > LOGIN_WINDOW_S:
            recent.popleft()
        if not recent:
            self.failures.pop(client, None)  # addresses with no recent failure are not kept
        if len(recent) >= LOGIN_FAILURES:
            wait = int(LOGIN_WINDOW_S - (now - recent[0])) + 1
            message = f"too many failed logins from {client}: wait {wait} s and try again"
            response = PlainTextResponse(message, status_code=429, headers={"Retry-After": str(wait)})
            return await response(scope, receive, send)

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    self.failures[client].append(time.monotonic())
                elif message["status"] < 300:
                    self.failures.pop(client, None)
            await send(message)

        await self.app(scope, receive, watch)


def _file_headers(send: Any) -> Any:
    """Wrap `send` so a served file cannot run as a page: nosniff, a sandboxing CSP, attachments."""

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
            kind = next((v for k, v in headers if k.lower() == b"content-type"), b"").split(b";")[0].strip()
            if kind not in INLINE_TYPES:
                headers = [(k, v) for k, v in headers if k.lower() not in (b"content-disposition", b"content-type")]
                headers += [(b"content-disposition", b"attachment"), (b"content-type", b"application/octet-stream")]
            headers += [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", FILE_CSP)]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
