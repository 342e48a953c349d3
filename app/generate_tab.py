"""The Generate tab: pick LoRAs from the library (or upload one), a strength each, and preview them.

Generation goes through `Studio.preview()` (the shared `AdapterPool`): switching LoRAs is a hot-swap, not a
reload, and the tab shows how long the swap took. Previews run one at a time; while a job trains they run
on the CPU (see `app/studio.py`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.security import SecurityError, inside, safe_name, suggest_name
from app.studio import Studio
from app.uploads import forget_uploads
from trainer.config_checks import MAX_SEED
from trainer.errors import StudioError

SLOTS = 3
"""LoRA pickers (each with its strength slider) on the tab."""
MAX_SIDE = 1024
SLIDER_MIN_W = 240
"""Pixels a slider needs for its label, number box and both end values; a narrower row wraps instead."""
LIBRARY_POLL_S = 5.0
"""Seconds between checks of the LoRA library for files that finished jobs published."""


REQUEST_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative",
    "seed": "seed",
    "steps": "steps",
    "guidance": "guidance",
    "width": "width",
    "height": "height",
}
"""API parameter name -> component name of the generation settings."""


@dataclass
class Request:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    width: int = 128
    height: int = 128


def _ensure_loaded(studio: Studio, pool: Any, names: list[str]) -> float:
    """Load the named library LoRAs the pool lacks (or whose file changed); returns the seconds it took."""
    library = studio.lora_files()
    loaded = set(pool.loaded())
    started = time.perf_counter()
    for name in names:
        if name not in library:
            raise SecurityError(
                f"LoRA {name!r} is not in the library ({studio.loras_dir})",
                fix="Pick one from the list, or upload a .safetensors file.",
            )
        stamp = library[name].stat().st_mtime_ns
        if name not in loaded or studio.lora_stamps.get(name) != stamp:
            pool.load(name, library[name])
            studio.lora_stamps[name] = stamp
    return time.perf_counter() - started


def _check(req: Request) -> Request:
    if not req.prompt.strip():
        raise SecurityError("the prompt is empty", fix="Type what the image should show.")
    if float(req.seed) != int(req.seed) or not 0 <= int(req.seed) <= MAX_SEED:
        raise SecurityError(f"seed {req.seed} is not allowed", fix=f"Use a whole number from 0 to {MAX_SEED}.")
    for side, value in (("width", req.width), ("height", req.height)):
        if not 64 <= int(value) <= MAX_SIDE or int(value) % 8:
            raise SecurityError(f"{side} {value} is not allowed", fix=f"Use a multiple of 8 from 64 to {MAX_SIDE}.")
    return Request(
        req.prompt,
        req.negative_prompt or "",
        int(req.seed),
        int(req.steps),
        float(req.guidance),
        int(req.width),
        int(req.height),
    )


def generate(studio: Studio, req: Request, strengths: dict[str, float], fuse: bool = False) -> tuple[Any, str]:
    """One seeded preview with the chosen LoRAs at their strengths; returns (image, what happened).

    `fuse` bakes the mix into the base weights (`AdapterPool.generate(fuse=True)`): repeats of one mix run at
    the base model's speed, and any change unfuses exactly first."""
    req = _check(req)
    started = time.perf_counter()
    with studio.preview() as pool:
        load_s = _ensure_loaded(studio, pool, list(strengths))
        images = pool.generate(
            req.prompt,
            negative_prompt=req.negative_prompt,
            seed=req.seed,
            steps=req.steps,
            guidance=req.guidance,
            width=req.width,
            height=req.height,
            strengths=strengths,
            fuse=bool(fuse),
        )
        swap = pool.last_swap_s
        fused = pool.fused
        device = studio.pool_device() or "?"
    mix = ", ".join(f"{n} × {w:g}" for n, w in strengths.items()) or "no LoRA (base model)"
    info = f"{mix} · seed {req.seed} · {time.perf_counter() - started:.1f}s on {device}"
    if load_s > 0.001:
        info += f" · loaded from disk in {load_s * 1000:.0f} ms"
    if swap is not None:
        info += f" · LoRA swap took {swap * 1000:.1f} ms (no reload)"
    if fused:
        info += " · fused into the base weights"
    return images[0], info


def grid(studio: Studio, req: Request, name: str, prompts: list[str], strengths: list[float]) -> tuple[Any, str]:
    """A prompt × strength grid of one LoRA, every cell with the same seed."""
    req = _check(Request(prompts[0] if prompts else "", **{k: v for k, v in vars(req).items() if k != "prompt"}))
    if not name:
        raise SecurityError("no LoRA is picked for the grid", fix="Choose a LoRA in the first slot.")
    from trainer.generate.grid import check_grid_size

    check_grid_size(1, len(prompts), len(strengths))  # before the pool (and a model) is loaded
    started = time.perf_counter()
    with studio.preview() as pool:
        _ensure_loaded(studio, pool, [name])
        image = pool.grid(
            prompts,
            strengths=strengths,
            seed=req.seed,
            loras=[name],
            steps=req.steps,
            guidance=req.guidance,
            width=req.width,
            height=req.height,
            negative_prompt=req.negative_prompt,
        )
    return (
        image,
        f"{name}: {len(prompts)} prompt{'s' * (len(prompts) != 1)} × strengths "
        f"{', '.join(f'{w:g}' for w in strengths)} in {time.perf_counter() - started:.1f} s.",
    )


def add_lora(studio: Studio, upload: str | None, name: str | None) -> str:
    """Check an uploaded `.safetensors` by loading it in the pool, then keep it in the library."""
    if not upload:
        raise SecurityError("no file was uploaded", fix="Drop a LoRA .safetensors file.")
    source = Path(upload)
    if source.suffix.lower() != ".safetensors":
        raise SecurityError(
            f"{source.name} is not a .safetensors file",
            fix="Only .safetensors LoRAs are loaded (pickled .ckpt/.pt files are never opened).",
        )
    name = safe_name(name or suggest_name(source.stem, fallback="uploaded"), what="LoRA name")
    target = inside(studio.loras_dir, name + ".safetensors")
    if target.exists():
        raise SecurityError(f"a LoRA named {name} is already in the library", fix="Give the upload another name.")
    with studio.preview() as pool:
        pool.load(name, source)  # raises LoraFileError naming the file when it is not a usable LoRA
    shutil.copyfile(source, target)
    return f"Added **{name}** to the library."


def default_size(studio: Studio) -> int:
    """The base model's own resolution (128 for tiny, 512 SD 1.x, 1024 SDXL), as a multiple of 8 in range."""
    from trainer.config import ModelConfig
    from trainer.models.resolution import native_resolution

    try:
        size = native_resolution(ModelConfig(base_model=studio.base_model))[0]
    except (StudioError, OSError, ValueError):
        size = 512
    return max(64, min(MAX_SIDE, int(size) // 8 * 8))


def build(studio: Studio) -> dict[str, Any]:
    """Lay out the tab in the current Blocks context; returns its components by name."""
    c: dict[str, Any] = {"slots": []}
    names = list(studio.lora_files())
    size = default_size(studio)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                c["library_note"] = gr.Markdown(_library_note(names), elem_id="gen-library")
                c["refresh"] = gr.Button("Refresh LoRA list", size="sm", scale=0, min_width=160, elem_id="gen-refresh")
            for i in range(SLOTS):
                with gr.Row():
                    pick = gr.Dropdown(
                        names,
                        label=f"LoRA {i + 1}",
                        value=None,
                        elem_id=f"gen-lora-{i}",
                        scale=2,
                        allow_custom_value=True,
                    )
                    weight = gr.Slider(
                        0,
                        1.5,
                        value=1.0,
                        step=0.05,
                        label="Strength",
                        min_width=SLIDER_MIN_W,
                        elem_id=f"gen-strength-{i}",
                    )
                c["slots"].append((pick, weight))
            c["prompt"] = gr.Textbox("", label="Prompt", lines=2, elem_id="gen-prompt")
            c["negative"] = gr.Textbox("", label="Negative prompt", elem_id="gen-negative")
            with gr.Row():
                c["seed"] = gr.Number(0, precision=0, label="Seed", elem_id="gen-seed")
                c["steps"] = gr.Slider(
                    1, 100, value=20, step=1, label="Steps", min_width=SLIDER_MIN_W, elem_id="gen-steps"
                )
                c["guidance"] = gr.Slider(
                    1, 15, value=7.5, step=0.5, label="Guidance", min_width=SLIDER_MIN_W, elem_id="gen-guidance"
                )
            with gr.Row():
                c["width"] = gr.Slider(
                    64, MAX_SIDE, value=size, step=8, label="Width", min_width=SLIDER_MIN_W, elem_id="gen-width"
                )
                c["height"] = gr.Slider(
                    64, MAX_SIDE, value=size, step=8, label="Height", min_width=SLIDER_MIN_W, elem_id="gen-height"
                )
            c["fuse"] = gr.Checkbox(False, label="Fuse for speed", elem_id="gen-fuse",
                                    info="Bake the chosen LoRAs into the base weights while their strengths stay "
                                         "the same (faster repeats; a change unfuses first)")
            c["generate"] = gr.Button("Generate", variant="primary", elem_id="gen-go")
            with gr.Accordion("Grid: prompts × strengths (LoRA 1)", open=False):
                c["grid_prompts"] = gr.Textbox("", label="Prompts (one a line)", lines=3, elem_id="gen-grid-prompts")
                c["grid_strengths"] = gr.Textbox("0, 0.5, 1", label="Strengths", elem_id="gen-grid-strengths")
                c["grid"] = gr.Button("Grid", elem_id="gen-grid")
            with gr.Accordion("Add a LoRA to the library", open=False):
                c["upload"] = gr.File(
                    label="LoRA .safetensors",
                    file_types=[".safetensors"],
                    type="filepath",
                    elem_id="gen-upload",
                )
                c["upload_name"] = gr.Textbox("", label="Name (optional)", elem_id="gen-upload-name")
                c["add"] = gr.Button("Add to library", elem_id="gen-add")
        with gr.Column(scale=3):
            c["image"] = gr.Image(label="Preview", type="pil", format="png", interactive=False, elem_id="gen-image")
            c["info"] = gr.Markdown(elem_id="gen-info")
    _wire(studio, c)
    return c


def _wire(studio: Studio, c: dict[str, Any]) -> None:
    pickers = [p for p, _ in c["slots"]]
    request_inputs = {name: c[key] for name, key in REQUEST_KEYS.items()}
    slot_inputs = {}
    for i, (pick, weight) in enumerate(c["slots"], start=1):
        slot_inputs |= {f"lora_{i}": pick, f"strength_{i}": weight}

    def run_generate(**values: Any) -> tuple[Any, str]:
        req = Request(**{name: values.pop(name) for name in REQUEST_KEYS})
        fuse = bool(values.pop("fuse", False))
        strengths = {
            values[f"lora_{i}"]: float(values[f"strength_{i}"]) for i in range(1, SLOTS + 1) if values.get(f"lora_{i}")
        }
        try:
            return generate(studio, req, strengths, fuse)
        except StudioError as err:
            return None, f"**Error:** {err}"

    def run_grid(lora: str | None, prompts: str, strengths: str, **values: Any) -> tuple[Any, str]:
        req = Request(**values)
        try:
            weights = [float(s) for s in str(strengths).replace(";", ",").split(",") if s.strip()]
        except ValueError:
            return (
                None,
                f"**Error:** strengths {strengths!r} must be numbers separated by commas, like 0, 0.5, 1",
            )
        lines = [p.strip() for p in str(prompts or "").splitlines() if p.strip()] or [req.prompt]
        try:
            return grid(studio, req, lora or "", lines, weights)
        except StudioError as err:
            return None, f"**Error:** {err}"

    def run_add(upload: str | None, name: str | None) -> list[Any]:
        try:
            text = add_lora(studio, upload, name)
        except StudioError as err:
            text = f"**Error:** {err}"
        finally:  # copied into the library or refused: the upload itself is no longer needed
            forget_uploads(studio.upload_dir, [upload] if isinstance(upload, str) else [])
        return [text, None, *[gr.update(choices=list(studio.lora_files())) for _ in pickers]]

    c["generate"].click(
        run_generate,
        None,
        [c["image"], c["info"]],
        api_name="generate",
        concurrency_limit=1,
        inputs_kwargs=request_inputs | slot_inputs | {"fuse": c["fuse"]},
    )
    c["grid"].click(
        run_grid,
        [pickers[0], c["grid_prompts"], c["grid_strengths"]],
        [c["image"], c["info"]],
        api_name="grid",
        concurrency_limit=1,
        inputs_kwargs=request_inputs,
    )
    c["add"].click(run_add, [c["upload"], c["upload_name"]], [c["info"], c["upload"], *pickers], api_name="add_lora")

    def refresh(known: list[str] | None, force: bool = False) -> list[Any]:
        names = list(studio.lora_files())
        if names == known and not force:  # nothing new: leave the pickers (and their open menus) alone
            return [gr.skip()] * (len(pickers) + 2)
        return [names, gr.update(value=_library_note(names)), *[gr.update(choices=names) for _ in pickers]]

    # the library grows when a job finishes (in the UI or the CLI): the pickers follow within a few seconds
    c["known"] = gr.State(list(studio.lora_files()))
    c["timer"] = gr.Timer(LIBRARY_POLL_S)
    library_outputs = [c["known"], c["library_note"], *pickers]
    c["timer"].tick(refresh, c["known"], library_outputs, api_name=False, show_progress="hidden")
    c["refresh"].click(lambda known: refresh(known, force=True), c["known"], library_outputs, api_name=False)
    c["on_load"] = (lambda: [gr.update(choices=list(studio.lora_files())) for _ in pickers], [], pickers)


def _library_note(names: list[str]) -> str:
    if not names:
        return "The library is empty: a finished training job adds its LoRA here, or add a file below."
    return f"{len(names)} LoRA{'s' * (len(names) != 1)} in the library."
