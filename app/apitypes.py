"""Wrong types through the API get a specific error naming the field, not a traceback or gradio's generic one.

    with StudioBlocks(title="LoRA Studio") as demo: ...   # app/main.py

The browser always sends what each widget holds, but `gradio_client` (or any HTTP client) can send a
string where a number goes, a list where a name goes, or NaN. gradio hands those to the widget's
`preprocess` and then to the handler, which fail with errors that tell the caller nothing. `StudioBlocks`
checks every input against its widget's kind first (in `validate_inputs`, the hook gradio runs before
preprocessing) and raises `gr.Error` saying which field wanted what.
"""

from __future__ import annotations

import math
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
    return None


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose events refuse inputs of the wrong type with a message naming the field."""

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        super().validate_inputs(block_fn, inputs)
        problems = [
            problem
            for component, value in zip(block_fn.inputs, inputs, strict=False)
            if (problem := type_problem(component, value))
        ]
        if problems:
            raise gr.Error("; ".join(problems) + ". Send each field the kind of value its widget holds.")
