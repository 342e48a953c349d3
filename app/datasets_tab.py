"""The Datasets tab: upload images or a zip, see and edit captions, set a trigger word, run the doctor.

Datasets live in `<home>/datasets/<name>/` (images with `.txt` captions beside them). Zips go through
`trainer.data.import_archive` (zip-slip, links and size caps refused); single files are copied under a
sanitised name. The trigger word is kept per dataset in `<name>/.studio.json` and fills the Train form.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from app import datasets_caption
from app.forms import unless_shown
from app.security import SecurityError, check_upload_count, inside, suggest_name
from app.studio import Studio
from app.uploads import forget_uploads
from trainer.errors import StudioError
from trainer.fileio import atomic_write_bytes

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp"}
UPLOAD_TYPES = sorted(IMAGE_EXTS) + [".txt", ".zip"]
META = ".studio.json"
GALLERY_LIMIT = 200


def import_files(studio: Studio, name: str, files: list[str] | None) -> str:
    """Add uploaded images, captions and zips to dataset `name` (created if new); returns a summary.

    The uploaded files are deleted afterwards, taken or refused: the upload folder does not grow.
    """
    try:
        return _import_files(studio, name, files)
    finally:
        forget_uploads(studio.upload_dir, files if isinstance(files, list) else [])


def _import_files(studio: Studio, name: str, files: list[str] | None) -> str:
    files = [str(f) for f in check_upload_count(files, studio.max_upload_files)]
    if not files:
        raise SecurityError("nothing was uploaded", fix="Drop images (PNG, JPEG, WebP), .txt captions or a .zip.")
    folder = studio.dataset_path(name)
    notes, copied = [], 0
    for upload in files:
        ext = Path(upload).suffix.lower()
        if ext == ".zip":
            notes.append(_import_zip(folder, Path(upload)))
        elif ext in IMAGE_EXTS or ext == ".txt":
            folder.mkdir(parents=True, exist_ok=True)
            target = inside(folder, suggest_name(Path(upload).stem, fallback="image") + ext)
            shutil.copyfile(upload, target)
            copied += 1
        else:
            notes.append(f"Skipped {Path(upload).name}: only PNG, JPEG, WebP, .txt and .zip files are accepted.")
    if copied:
        notes.insert(0, f"Copied {copied} file{'s' * (copied != 1)} into dataset **{folder.name}**.")
    return "\n\n".join(notes)


def _import_zip(folder: Path, archive: Path) -> str:
    """The safe importer, merging into an existing dataset: a file already there refuses the archive by name."""
    from trainer.data import import_archive

    report = import_archive(archive, folder.parent, folder.name, merge=True)
    images, captions = len(report.images), len(report.captions)
    lines = [f"Imported {images} image{'s' * (images != 1)} and {captions} caption{'s' * (captions != 1)} "
             f"into {folder.name} (from {archive.name})."]
    lines += [f"Skipped {entry}: {reason}." for entry, reason in report.skipped]
    return "\n\n".join(lines)


def list_items(studio: Studio, name: str) -> list[tuple[Path, str]]:
    """(image path, caption) for each image in the dataset, as the trainer reads it."""
    from trainer.config import DataConfig
    from trainer.data import scan_dataset

    folder = studio.dataset_path(name)
    items = scan_dataset(DataConfig(path=str(folder)))
    real_folder = folder.resolve()
    seen: dict[Path, str] = {}
    for item in items:  # repeat folders may list an image more than once
        path = Path(item.image_path)
        # a link (or a linked sub-folder) that leads out of the dataset is never shown: the gallery would
        # copy its target into gradio's cache and serve it
        if real_folder in path.resolve().parents:
            seen.setdefault(path, item.caption)
    return list(seen.items())


def caption_rows(studio: Studio, name: str) -> list[list[str]]:
    folder = studio.dataset_path(name)
    return [[str(path.relative_to(folder)), caption] for path, caption in list_items(studio, name)]


def save_captions(studio: Studio, name: str, rows: list[list[Any]]) -> str:
    """Write each row's caption to the `.txt` beside its image; rows naming other files are refused."""
    folder = studio.dataset_path(name)
    saved = 0
    for row in rows:
        if len(row) < 2 or not str(row[0]).strip():
            continue
        image = inside(folder, str(row[0]).strip())
        if image.suffix.lower() not in IMAGE_EXTS or not image.is_file():
            raise SecurityError(
                f"{row[0]!r} is not an image of dataset {folder.name}",
                fix="Edit only the caption column; reload the dataset to see its files.",
            )
        caption = " ".join(str(row[1] or "").split())
        atomic_write_bytes(image.with_suffix(".txt"), caption.encode("utf-8"))
        saved += 1
    return f"Saved {saved} caption{'s' * (saved != 1)} in **{folder.name}**."


def delete_image(studio: Studio, name: str, file: str) -> str:
    """Delete one image of the dataset and the caption beside it."""
    folder = studio.dataset_path(name)
    if not str(file or "").strip():
        raise SecurityError("no image is selected", fix="Click an image in the gallery first.")
    image = inside(folder, str(file).strip())
    if image.suffix.lower() not in IMAGE_EXTS or not image.is_file():
        raise SecurityError(f"{file!r} is not an image of dataset {folder.name}",
                            fix="Click an image in the gallery, then Delete.")
    caption = image.with_suffix(".txt")
    image.unlink()
    if caption.is_file():
        caption.unlink()
        return f"Deleted {file} and its caption from **{folder.name}**."
    return f"Deleted {file} from **{folder.name}** (it had no caption file)."


def read_trigger(studio: Studio, name: str) -> str:
    meta = studio.dataset_path(name) / META
    try:
        return str(json.loads(meta.read_text(encoding="utf-8")).get("trigger_word", ""))
    except (OSError, ValueError):
        return ""


def save_trigger(studio: Studio, name: str, word: str) -> str:
    folder = studio.dataset_path(name)
    if not folder.is_dir():
        raise SecurityError(f"dataset {folder.name} does not exist", fix="Upload images to it first.")
    word = " ".join((word or "").split())[:100]
    atomic_write_bytes(folder / META, json.dumps({"trigger_word": word}).encode("utf-8"))
    return f"Trigger word of **{folder.name}** set to `{word}`." if word else "Trigger word cleared."


def run_doctor(studio: Studio, name: str) -> str:
    from trainer.config import TrainConfig
    from trainer.data import doctor

    folder = studio.dataset_path(name)
    config = TrainConfig()
    config.model.base_model = studio.base_model
    config.data.path = str(folder)
    config.data.trigger_word = read_trigger(studio, name)
    return doctor(folder, config).format()


def _safe(fn: Any, *args: Any) -> tuple[bool, Any]:
    """Run a handler step; a StudioError becomes a message for the user instead of a stack trace."""
    try:
        return True, fn(*args)
    except StudioError as err:
        return False, f"**Error:** {err}"


def build(studio: Studio) -> dict[str, Any]:
    """Lay out the tab in the current Blocks context; returns its components by name."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["dataset"] = gr.Dropdown(
            studio.dataset_names(),
            label="Dataset",
            allow_custom_value=True,
            info="Pick one, or type a new name and upload files to create it.",
            elem_id="ds-name",
            scale=3,
        )
        c["refresh"] = gr.Button("Refresh", elem_id="ds-refresh", scale=1)
    c["upload"] = gr.File(
        label="Upload images (PNG, JPEG, WebP), .txt captions or a .zip",
        file_count="multiple",
        file_types=UPLOAD_TYPES,
        type="filepath",
        elem_id="ds-upload",
    )
    c["import"] = gr.Button("Add to dataset", variant="primary", elem_id="ds-import")
    c["message"] = gr.Markdown(elem_id="ds-message")
    c["gallery"] = gr.Gallery(label="Images and captions", columns=6, height=320, elem_id="ds-gallery")
    with gr.Row():
        c["selected"] = gr.Textbox(label="Selected image", interactive=False, scale=3, elem_id="ds-selected",
                                   placeholder="Click an image in the gallery")
        c["delete"] = gr.Button("Delete image and caption", variant="stop", scale=1, elem_id="ds-delete")
    datasets_caption.build(c)
    c["captions"] = gr.Dataframe(
        headers=["file", "caption"],
        column_count=2,
        interactive=True,
        static_columns=[0],
        wrap=True,
        label="Captions (edit, then Save)",
        elem_id="ds-captions",
    )
    with gr.Row():
        c["save"] = gr.Button("Save captions", elem_id="ds-save")
        c["trigger"] = gr.Textbox(
            label="Trigger word",
            info="Prepended to captions that lack it when training.",
            elem_id="ds-trigger",
            scale=2,
        )
        c["save_trigger"] = gr.Button("Set trigger word", elem_id="ds-save-trigger")
        c["doctor"] = gr.Button("Run the doctor", elem_id="ds-doctor")
    c["report"] = gr.Textbox(label="Doctor's report", lines=8, interactive=False, elem_id="ds-report")
    _wire(studio, c)
    return c


def _wire(studio: Studio, c: dict[str, Any]) -> None:
    def show(name: str | None) -> tuple[Any, Any, Any, Any]:
        if not name:
            return gr.update(choices=studio.dataset_names()), [], [], ""
        ok, items = _safe(list_items, studio, name)
        gallery = [(str(p), cap) for p, cap in items[:GALLERY_LIMIT]] if ok else []
        rows = _safe(caption_rows, studio, name)[1] if ok else []
        return (
            gr.update(choices=studio.dataset_names()),
            gallery,
            rows,
            read_trigger(studio, name) if ok else "",
        )

    def add(name: str | None, files: list[str] | None) -> tuple[str, Any, Any, Any, Any, None]:
        ok, text = _safe(import_files, studio, name or "", files)
        return (text, *show(name if ok else None), None)

    def pick(name: str | None, rows: Any, trigger: str | None) -> tuple[Any, Any, Any, Any]:
        """`show` for the dropdown's change, writing the captions and trigger word only where they differ from what
        the event saw: gradio fires a change more than once a pick, and a repeat must not land over edits since."""
        choices, gallery, new_rows, new_trigger = show(name)
        return choices, gallery, unless_shown(new_rows, _rows(rows)), unless_shown(new_trigger, trigger or "")

    outputs = [c["dataset"], c["gallery"], c["captions"], c["trigger"]]
    c["dataset"].change(pick, [c["dataset"], c["captions"], c["trigger"]], outputs, api_name=False)
    c["refresh"].click(show, c["dataset"], outputs, api_name="show_dataset")
    c["import"].click(add, [c["dataset"], c["upload"]], [c["message"], *outputs, c["upload"]], api_name="import_files")
    view = [c["gallery"], c["captions"]]
    reshow = (lambda name: show(name)[1:3], c["dataset"], view)  # the gallery's labels follow the files
    c["save"].click(
        lambda name, rows: _safe(save_captions, studio, name or "", _rows(rows))[1],
        [c["dataset"], c["captions"]],
        c["message"],
        api_name="save_captions",
    ).then(*reshow, api_name=False)

    def select(rows: Any, evt: gr.SelectData) -> str:
        table = _rows(rows)
        return str(table[evt.index][0]) if isinstance(evt.index, int) and evt.index < len(table) else ""

    c["gallery"].select(select, c["captions"], c["selected"], api_name=False)
    c["delete"].click(
        lambda name, file: (_safe(delete_image, studio, name or "", file)[1], ""),
        [c["dataset"], c["selected"]],
        [c["message"], c["selected"]],
        api_name="delete_image",
    ).then(*reshow, api_name=False)

    def run_caption(name, model, kind, mode, prefix, trigger, threshold, progress=gr.Progress()) -> str:  # noqa: B008
        word = trigger if prefix else ""
        return _safe(datasets_caption.caption, studio, name or "", model, kind, mode, word, threshold, progress)[1]

    c["cap_run"].click(
        run_caption,
        [c["dataset"], c["cap_model"], c["cap_kind"], c["cap_mode"], c["cap_prefix"], c["trigger"],
         c["cap_threshold"]],
        c["message"],
        api_name="caption_dataset",
        concurrency_limit=1,
    ).then(*reshow, api_name=False)
    c["save_trigger"].click(
        lambda name, word: _safe(save_trigger, studio, name or "", word)[1],
        [c["dataset"], c["trigger"]],
        c["message"],
        api_name="save_trigger",
    )
    c["doctor"].click(
        lambda name: _safe(run_doctor, studio, name or "")[1], c["dataset"], c["report"], api_name="doctor"
    )
    # on a page (re)load the dataset the browser kept (app/persist.py) is shown at once, gallery and table
    c["on_load"] = (show, [c["dataset"]], outputs)


def _rows(value: Any) -> list[list[Any]]:
    """Dataframe values arrive as a pandas frame (browser) or a dict/list (API); normalise to rows."""
    if hasattr(value, "values") and hasattr(value, "columns"):
        return value.values.tolist()
    if isinstance(value, dict):
        return list(value.get("data", []))
    return list(value or [])
