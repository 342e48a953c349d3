"""The page survives a reconnect: the form values and the selected job live in the browser (`gr.BrowserState`).

When the server restarts, gradio's page notices the lost connection, waits for the server and reloads
itself; everything typed into the forms would be gone. So every value widget the tabs name is saved in the
browser's localStorage whenever it changes, and put back when the page loads, before the tabs' own load
handlers run with it (the Train tab's job view follows the restored job, not the newest one).

    state = persist.attach(demo, {"train.job": train["job"], ...}, loads, secret=persist.secret(home))

BrowserState encrypts what it stores; its key is kept in `<home>/.browser-secret` (mode 600) so a restarted
server can still read what the page stored under the previous one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

STORAGE_KEY = "lora-studio-form"
SECRET_FILE = ".browser-secret"
VALUE_TYPES = (gr.Textbox, gr.Number, gr.Slider, gr.Dropdown, gr.Checkbox, gr.Radio, gr.CheckboxGroup)
Load = tuple[Callable[..., Any], list[Any], list[Any]]


def secret(home: Path) -> str:
    """The BrowserState key of this home, made once (a new one would make stored forms unreadable)."""
    path = Path(home) / SECRET_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
        return value


def value_components(prefix: str, tab: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The tab's value widgets (its fields too) by dotted name, such as `train.fields.train.steps`."""
    found = {}
    items = tab.items() if isinstance(tab, dict) else enumerate(tab)
    for key, comp in items:
        if key in skip:
            continue
        if isinstance(comp, (dict, list, tuple)):
            found |= value_components(f"{prefix}.{key}", comp, skip)
        elif isinstance(comp, VALUE_TYPES) and getattr(comp, "interactive", None) is not False:
            found[f"{prefix}.{key}"] = comp
    return found


def attach(demo: gr.Blocks, saved: dict[str, Any], loads: list[Load], secret_key: str) -> gr.BrowserState:
    """One page-load handler (the tabs' loads, with stored values put back) and one saver for every change."""
    state = gr.BrowserState({}, storage_key=STORAGE_KEY, secret=secret_key)
    names = list(saved)
    comps = list(saved.values())
    inputs = _unique([comp for _, ins, _ in loads for comp in ins])
    outputs = _unique([comp for _, _, outs in loads for comp in outs] + comps)

    def on_load(stored: Any, *current: Any) -> list[Any]:
        stored = stored if isinstance(stored, dict) else {}
        back = {id(comp): stored[name] for name, comp in saved.items() if name in stored}  # by identity
        values = {id(c): v for c, v in zip(inputs, current, strict=True)} | back
        result: dict[int, Any] = {}
        for fn, ins, outs in loads:
            got = fn(*[values[id(c)] for c in ins])
            got = got if isinstance(got, (list, tuple)) else [got]
            result |= {id(c): v for c, v in zip(outs, got, strict=True)}
        for key, value in back.items():
            old = result.get(key)
            result[key] = {**old, "value": value} if isinstance(old, dict) else gr.update(value=value)
        return [result.get(id(comp), gr.skip()) for comp in outputs]

    demo.load(on_load, [state, *inputs], outputs, api_name=False, show_progress="hidden")
    gr.on(
        [comp.change for comp in comps],
        lambda *values: dict(zip(names, values, strict=True)),
        comps,
        state,
        api_name=False,
        trigger_mode="always_last",
        show_progress="hidden",
        queue=False,
    )
    return state


def _unique(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if not any(item is s for s in seen):
            seen.append(item)
    return seen
