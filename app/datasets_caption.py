"""The Datasets tab's auto-captioning panel: a captioner or tagger by hub id, run over the dataset with a
progress bar; the captions land in the table, where they can be edited and saved like any other.

The work is `trainer.data.autocaption` (see `trainer/data/captioners.py` for the model kinds); this module
only lays out the widgets and calls it. The model runs where previews would (`Studio.preview_device`): on
the CPU while a job trains, so captioning never takes the GPU from a training job.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.studio import Studio

DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
MODE_CHOICES = [
    ("Only images without a caption", "missing"),
    ("Overwrite every caption", "overwrite"),
    ("Append to each caption", "append"),
]
KIND_CHOICES = [("Read it from the model", "auto"), ("Captioner (sentences)", "captioner"), ("Tagger (tags)", "tagger")]


def caption(
    studio: Studio,
    name: str,
    model: str,
    kind: str,
    mode: str,
    trigger: str | None,
    threshold: float,
    progress: Any = None,
) -> str:
    """Caption dataset `name`; `trigger` (when given) goes first in every caption written. Returns a summary."""
    from trainer.data.autocaption import caption_dataset
    from trainer.data.captioners import load_captioner

    folder = studio.dataset_path(name)
    if not folder.is_dir():
        from app.security import SecurityError

        raise SecurityError(f"dataset {folder.name} does not exist", fix="Upload images to it first.")
    device = studio.preview_device()
    if progress is not None:
        progress(0, desc=f"Loading {model}")
    captioner = load_captioner(model, kind=kind or "auto", device=device, threshold=float(threshold))

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="Captioning", unit="images")

    report = caption_dataset(folder, captioner, mode=mode or "missing", prefix=trigger or "", on_progress=step)
    return (
        f"{report.format()}\n\nModel: {model} ({captioner.kind}) on {device}. Edit the captions below and "
        "press Save captions to change them."
    )


def build(c: dict[str, Any]) -> None:
    """Lay out the panel in the current Blocks context, adding its components to `c`."""
    with gr.Accordion("Auto-caption", open=False, elem_id="ds-cap-panel"):
        with gr.Row():
            c["cap_model"] = gr.Textbox(
                DEFAULT_MODEL,
                label="Captioning model (hub id or folder)",
                scale=3,
                info="A BLIP-style captioner writes sentences; a WD14-style tagger "
                "(image classifier with selected_tags.csv) writes tags.",
                elem_id="ds-cap-model",
            )
            c["cap_kind"] = gr.Dropdown(KIND_CHOICES, value="auto", label="Model kind", elem_id="ds-cap-kind")
        with gr.Row():
            c["cap_mode"] = gr.Radio(MODE_CHOICES, value="missing", label="Which captions", elem_id="ds-cap-mode")
            c["cap_prefix"] = gr.Checkbox(True, label="Put the trigger word first", elem_id="ds-cap-prefix")
            c["cap_threshold"] = gr.Slider(
                0.05,
                0.95,
                value=0.35,
                step=0.05,
                label="Tag threshold (taggers)",
                min_width=240,
                elem_id="ds-cap-threshold",
            )
        c["cap_run"] = gr.Button("Caption images", variant="primary", elem_id="ds-caption")
