"""What the web server may expose and accept: bind/auth rules, served paths, upload limits, safe names.

    auth = resolve_auth(args.auth, args.auth_file, os.environ.get("LORA_STUDIO_AUTH"))
    check_bind(args.host, auth, insecure_no_auth=args.insecure_no_auth)   # raises SecurityError
    name = safe_name(user_text, what="dataset name")                      # or raises SecurityError
    path = inside(home / "datasets", name)                                # never escapes the folder

Every user string that becomes a file name goes through `safe_name` and `inside`; nothing here or in
`app/` ever reaches a shell.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from trainer import names
from trainer.errors import StudioError

MAX_UPLOAD_MB = 200
"""Default largest single upload in MB (images, zips, LoRA files); gradio refuses bigger ones (HTTP 413)."""
MAX_UPLOAD_FILES = 1000
"""Default most files accepted in one upload."""
MAX_CAPTION_CHARS = names.MAX_CAPTION_CHARS
"""Longest caption saved from the caption editor."""
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
AUTH_HELP = (
    "Set a login with --auth USER:PASSWORD, --auth-file FILE (one USER:PASSWORD a line), or the "
    "LORA_STUDIO_AUTH=USER:PASSWORD environment variable; or pass --insecure-no-auth if the network is "
    "trusted."
)
_NAME = names.NAME_PATTERN  # the one rule the CLI and the config checks use too


class SecurityError(StudioError):
    """A request or a server setting would expose files or the machine; the message says what to do."""


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """Parse `user:pass` entries separated by newlines or commas; `where` names the source in errors."""
    pairs = []
    for raw in re.split(r"[\n,]", text):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise SecurityError(
                f"has an entry that is not USER:PASSWORD ({user.strip() or '<empty>'}:...)",
                where=where,
                fix="Write each login as USER:PASSWORD with a non-empty user and password.",
            )
        pairs.append((user.strip(), password))
    return pairs


def resolve_auth(auth: str | None, auth_file: str | None, env_value: str | None) -> list[tuple[str, str]]:
    """Collect logins from --auth, --auth-file and LORA_STUDIO_AUTH (all that are given)."""
    pairs: list[tuple[str, str]] = []
    if auth:
        pairs += parse_auth_pairs(auth, "--auth")
    if auth_file:
        path = Path(auth_file)
        if not path.is_file():
            raise SecurityError(
                "does not exist",
                where=f"--auth-file {path}",
                fix="Point --auth-file at a file with one USER:PASSWORD a line.",
            )
        pairs += parse_auth_pairs(path.read_text(encoding="utf-8"), f"--auth-file {path}")
    if env_value:
        pairs += parse_auth_pairs(env_value, "LORA_STUDIO_AUTH")
    return pairs


def check_bind(host: str, auth: Sequence[tuple[str, str]], insecure_no_auth: bool = False) -> None:
    """Refuse to listen beyond this machine without a login, unless the user says the network is trusted."""
    if is_loopback(host) or auth or insecure_no_auth:
        return
    raise SecurityError(
        f"--host {host} would let anyone on the network use this server, and no login is set",
        fix=AUTH_HELP,
    )


def safe_name(text: str, what: str = "name") -> str:
    """Return `text` stripped if it is a plain file name (letters, digits, . _ -), else refuse it."""
    name = (text or "").strip()
    if not _NAME.match(name) or name in (".", "..") or ".." in name:
        raise SecurityError(
            f"{what} {name!r} is not allowed",
            fix="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


def suggest_name(text: str, fallback: str = "dataset") -> str:
    """Turn free text (an uploaded file's stem) into a safe name, for a default the user can edit."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text or "").strip("-._")[:64]
    cleaned = cleaned.replace("..", ".")
    return cleaned if cleaned and _NAME.match(cleaned) else fallback


def inside(root: Path, *parts: str) -> Path:
    """Join `parts` under `root` and refuse any result that resolves outside it (symlinks included)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise SecurityError(
            f"{'/'.join(parts)!r} points outside {root}",
            fix="Pick a file from the list instead of typing a path.",
        )
    return path


def check_upload_count(files: Sequence[object] | None, limit: int | None = None) -> list[object]:
    """Refuse more than `limit` files in one upload (gradio limits each file's size, not their number)."""
    files = list(files or [])
    limit = MAX_UPLOAD_FILES if limit is None else limit
    if len(files) > limit:
        raise SecurityError(
            f"{len(files)} files were uploaded at once, more than the limit of {limit}",
            fix=f"Upload at most {limit} files at a time, or pack them in a zip.",
        )
    return files


def blocked_paths(home: Path) -> list[str]:
    """Files under `<home>` that are never served even though `<home>` is allowed: the job database."""
    home = home.resolve()
    return [
        str(home / name)
        for name in ("studio.sqlite", "studio.sqlite-wal", "studio.sqlite-shm", "studio.sqlite-journal")
    ]


def _split_host(value: str) -> tuple[str, str]:
    """`host[:port]` (IPv6 in brackets) -> (lower-case host, port or '')."""
    value = (value or "").strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def host_allowed(host_header: str, names: Sequence[str]) -> bool:
    """True when a request's Host header names this studio: an IP address (which no DNS can rebind),
    `localhost`, or one of `names` (the machine's own names and every `--allowed-host`)."""
    host, _ = _split_host(host_header)
    if not host:
        return False
    return _is_ip(host) or host in {"localhost", *(n.lower() for n in names)}


def same_origin(origin: str, host_header: str, proxied: Sequence[str] = ()) -> bool:
    """True when a browser's Origin header is the studio's own page: the same host and port as the request,
    or a name given with `--allowed-host` (a reverse proxy in front of the studio)."""
    from urllib.parse import urlsplit

    parts = urlsplit((origin or "").strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (sandboxed frames, file:// pages) and anything odd
    default = "443" if parts.scheme == "https" else "80"
    host, port = _split_host(host_header)
    if parts.hostname in {n.lower() for n in proxied}:
        return True
    return parts.hostname == host and str(parts.port or default) == (port or default)


def machine_names() -> list[str]:
    """This machine's own host names (a browser on the LAN may open the studio by them)."""
    import socket

    names = {socket.gethostname(), socket.getfqdn()}
    return sorted(n.lower() for n in names if n)
