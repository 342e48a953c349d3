"""Wrong types through the API get a specific error naming the field, not a traceback or gradio's generic one.

    with StudioBlocks(title="LoRA Studio") as demo: ...   # app/main.py

The browser always sends what each widget holds, but `gradio_client` (or any HTTP client) can send a
string where a number goes, a list where a name goes, or NaN. gradio hands those to the widget's
`preprocess` and then to the handler, which fail with errors that tell the caller nothing. `StudioBlocks`
checks every input against its widget's kind first (in `validate_inputs`, the hook gradio runs before
preprocessing) and raises `gr.Error` saying which field wanted what. Whatever still goes wrong (an input
gradio cannot read, a handler that fails) reaches the caller as a `gr.Error` that names the action and the
reason, and the traceback goes to the server's log only.
"""

from __future__ import annotations

import math
import os
import traceback
from pathlib import Path
from typing import Any

import gradio as gr

TEXT = (gr.Textbox, gr.Dropdown, gr.Radio)
NUMBER = (gr.Number, gr.Slider)


def _label(component: Any) -> str:
    return str(getattr(component, "label", None) or getattr(component, "elem_id", None) or type(component).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def type_problem(component: Any, value: Any) -> str | None:
    """Why `value` cannot be an input of `component`, or None when it can (None is always accepted)."""
    if value is None:
        return None
    if isinstance(component, NUMBER):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{_label(component)} must be a number, got {_shown(value)}"
        if not math.isfinite(value):
            return f"{_label(component)} must be a finite number, got {value}"
    elif isinstance(component, gr.Checkbox):
        if not isinstance(value, bool):
            return f"{_label(component)} must be true or false, got {_shown(value)}"
    elif isinstance(component, TEXT) and not getattr(component, "multiselect", False):
        if not isinstance(value, str):
            return f"{_label(component)} must be text, got {_shown(value)}"
    elif isinstance(component, gr.Dataframe) and not isinstance(value, (list, dict)):
        return f"{_label(component)} must be a table (rows of values), got {_shown(value)}"
    elif isinstance(component, gr.File):
        return _file_problem(component, value)
    return None


def _file_problem(component: Any, value: Any) -> str | None:
    """A file input is a FileData dict (or a list of them) naming a file uploaded to this server."""
    items = value if isinstance(value, list) else [value]
    upload_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or "/nonexistent").resolve()
    for item in items:
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str):
            return (
                f"{_label(component)} must be an uploaded file ({{'path': ..., 'meta': {{'_type': "
                f"'gradio.FileData'}}}}, as gradio_client's handle_file makes), got {_shown(item)}"
            )
        if upload_dir not in Path(path).resolve().parents:
            return f"{_label(component)}: {Path(path).name!r} was not uploaded to this studio; upload it first"
    return None


def _action(block_fn: Any) -> str:
    name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "the request"
    return str(name).strip("/") or "the request"


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose events refuse inputs of the wrong type with a message naming the field."""

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        wanted = block_fn.inputs
        if len(inputs) < len(wanted):
            labels = ", ".join(_label(c) for c in wanted)
            raise gr.Error(f"{_action(block_fn)} takes {len(wanted)} values ({labels}), got {len(inputs)}")
        problems = [
            problem
            for component, value in zip(block_fn.inputs, inputs, strict=False)
            if (problem := type_problem(component, value))
        ]
        if problems:
            raise gr.Error("; ".join(problems) + ". Send each field the kind of value its widget holds.")

    async def preprocess_data(self, block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().preprocess_data(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise gr.Error(f"{_action(block_fn)}: an input could not be read: {_reason(err)}") from err

    async def call_function(self, block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().call_function(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            from trainer.errors import StudioError

            fn = block_fn if not isinstance(block_fn, int) else self.fns[block_fn]
            if isinstance(err, StudioError):
                raise gr.Error(str(err)) from err
            traceback.print_exc()  # for the server's log; the caller gets the reason
            raise gr.Error(f"{_action(fn)} failed: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
