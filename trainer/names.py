"""The one rule for names that become file or folder names (datasets, LoRAs, jobs), shared by the CLI and the UI.

    check_name("cats-v2", "export.name")   # -> None: allowed
    check_name("a..b", "export.name")      # -> "export.name 'a..b' is not allowed: use 1-64 letters, ..."

Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64 characters, and no `..`:
such a name is one path component on every filesystem, never a hidden file, never a climb out of its
folder. `MAX_CAPTION_CHARS` is the longest caption the studio keeps (the caption editor, imports, scans).
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 64
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z, not $: "$" lets a trailing "\n" in
NAME_RULE = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, and no '..'"
MAX_CAPTION_CHARS = 2000
"""Longest caption in characters; a caption file over `MAX_CAPTION_BYTES` is refused unread."""
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS + 3
"""UTF-8 takes at most 4 bytes a character (+3 for a byte-order mark)."""


def is_name(text: object) -> bool:
    """True when `text` is a usable file name under the rule above."""
    return isinstance(text, str) and bool(NAME_PATTERN.fullmatch(text)) and ".." not in text


def check_name(text: object, where: str) -> str | None:
    """None when `text` is a usable name, else the problem as one line naming `where` and the rule."""
    if is_name(text):
        return None
    shown = repr(text) if len(str(text)) <= 80 else f"{str(text)[:40]!r}... ({len(str(text))} characters)"
    return f"{where} {shown} is not allowed: {NAME_RULE}"
