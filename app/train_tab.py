"""The Train tab: the config form with presets, Start (queues a job), and a live view of any job in `<home>`.

The job list and the live view are read from the job store and each job's `events.jsonl` on every timer
tick, so they show CLI-started jobs too and survive a browser refresh and a server restart.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from app import forms
from app.security import safe_name
from app.studio import ACTIVE, Studio
from app.train_check import DatasetNotReady, check_before_start
from app.train_view import LOSS_SERIES, MIN_COLUMNS, downloads_note, loss_frame, lr_frame, sample_gallery
from trainer.errors import StudioError
from trainer.jobs.supervisor import RESUMABLE

REFRESH_S = 2.0
LOG_LINES = 14
JOB_HEADERS = ["id", "name", "status", "step", "loss", "ETA"]
MEMORY_FIELDS = ("model.base_model", "data.resolution", "network.rank", "network.dropout", "network.train_text_encoder",
                 "train.batch_size", "train.mixed_precision", "train.gradient_checkpointing", "data.shuffle_tags",
                 "data.caption_dropout", "optim.optimizer")
"""Form fields the memory estimate depends on; a change to any of them re-estimates."""


def start_job(studio: Studio, values: dict[str, Any], dataset: str) -> str:
    """Turn the form into a config and queue it; returns the new job id."""
    if not dataset:
        raise StudioError("no dataset is selected", fix="Pick a dataset (make one in the Datasets tab).")
    # the name becomes file names in the library: refuse what the library would, before a job is queued
    safe_name(str(values.get("export.name") or ""), what="LoRA name")
    config = forms.values_to_config(values, studio.home, dataset=dataset)
    check_before_start(config, dataset)  # a missing or refused dataset is refused here, never queued
    studio.yield_gpu()  # the job gets the whole GPU: a preview pool sitting there steps aside first
    return studio.supervisor.submit(config)


def estimate_text(values: dict[str, Any], home: Path) -> str:
    """One Markdown line: the estimated peak memory of a step for the form's settings, and whether it fits the
    GPU (trainer.estimate traces the model's architecture; traces are reused, so a setting seen before is instant)."""
    from trainer.estimate import estimate_step, format_bytes
    from trainer.estimate.oom import accelerator_memory

    try:
        est = estimate_step(forms.values_to_config(values, home))
    except StudioError as err:
        return f"**Memory estimate:** not available ({err})"
    parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in est.parts.items())
    line = f"**Memory estimate:** {format_bytes(est.peak_bytes)} per step ({parts})"
    device = accelerator_memory()
    if device is None:
        return line + "; no GPU found (training runs on the CPU)."
    line += f"; {device['name']}: {format_bytes(device['free'])} free of {format_bytes(device['total'])}"
    if est.peak_bytes > device["free"]:
        line += (" — **does not fit**: turn on gradient checkpointing, lower the batch size or resolution "
                 "(`lora-studio estimate --fit` says which fits)")
    return line + "."


def fmt_eta(seconds: Any) -> str:
    if seconds is None or seconds == "":
        return ""
    seconds = int(float(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def fmt_loss(loss: Any) -> str:
    return "" if loss is None else f"{float(loss):.4f}"


def job_rows(jobs: list[dict]) -> list[list[Any]]:
    return [
        [
            j["id"],
            j.get("name", ""),
            j["status"],
            f"{j.get('step') or 0}/{j.get('total_steps') or '?'}",
            fmt_loss(j.get("loss")),
            fmt_eta(j.get("eta_s")) if j["status"] == "running" else "",
        ]
        for j in jobs
    ]


def job_choices(jobs: list[dict]) -> list[tuple[str, str]]:
    return [(f"{j['id']} · {j.get('name', '')} · {j['status']}", j["id"]) for j in jobs]


def job_view(studio: Studio, job_id: str) -> dict[str, Any]:
    """Everything the live view shows for one job, from the store and its events log."""
    sup = studio.supervisor
    job = sup.show(job_id)
    events = sup.events(job_id)
    failed = next((e for e in reversed(events) if e.get("kind") == "failed"), None)
    folder = Path(job["dir"])
    finished = next((e for e in reversed(events) if e.get("kind") == "done"), {})
    # a gracefully stopped run exports its LoRA too; the job store lists outputs of finished runs only
    outputs = job.get("outputs") or finished.get("outputs") or []
    downloads = [str(p) for p in outputs if Path(p).is_file()]
    config = folder / "config.toml"
    if downloads and config.is_file() and not any(Path(p).name == "config.toml" for p in downloads):
        downloads.append(str(config))
    status = (
        f"**{job['status']}** · step {job.get('step') or 0}/{job.get('total_steps') or '?'}"
        f" · loss {fmt_loss(job.get('loss')) or '–'}"
    )
    if job["status"] == "running" and job.get("eta_s") is not None:
        status += f" · ETA {fmt_eta(job['eta_s'])}"
    if job.get("best_step"):
        status += f" · best step {job['best_step']} (validation loss {fmt_loss(job.get('validation_loss'))})" \
            if job["status"] == "running" else f" · best step {job['best_step']} (`.best.safetensors`)"
    started = next((e for e in reversed(events) if e.get("kind") == "started"), {})
    if started.get("log_dir"):
        status += f"\n\nTensorBoard: `tensorboard --logdir {started['log_dir']}`"
    error = job.get("error") or (failed or {}).get("error")
    if error:
        advice = (failed or {}).get("advice")
        status += f"\n\n**Error:** {error}" + (f"\n\n{advice}" if advice else "")
    samples, columns = sample_gallery(events, folder)
    return {
        "status": status,
        "loss": loss_frame(events),
        "lr": lr_frame(events),
        "samples": samples,
        "sample_columns": columns,
        "log": sup.log_tail(job_id, lines=LOG_LINES),
        "downloads": downloads,
        "downloads_note": downloads_note(job, events),
        "job": {**job, "tensorboard_log_dir": started.get("log_dir") or None},
    }


def build(studio: Studio) -> dict[str, Any]:
    """Lay out the tab in the current Blocks context; returns its components by name."""
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=2):
            c["preset"] = gr.Radio(list(forms.PRESETS), label="Preset", value=None, elem_id="train-preset")
            c["preset_help"] = gr.Markdown(forms.preset_help(None), elem_id="train-preset-help")
            c["dataset"] = gr.Dropdown(
                studio.dataset_names(), label="Dataset", elem_id="train-dataset", allow_custom_value=True
            )
            c["fields"] = forms.build_fields(forms.ESSENTIALS)
            with gr.Accordion("Samples during training", open=False):
                c["fields"].update(forms.build_fields(forms.SAMPLES))
            with gr.Accordion("Advanced", open=False):
                c["fields"].update(forms.build_fields(forms.ADVANCED))
            c["fields"]["model.base_model"].value = studio.base_model
            c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
            c["message"] = gr.Markdown(elem_id="train-message")
            c["estimate"] = gr.Markdown("**Memory estimate:** change a setting to estimate the peak memory.",
                                        elem_id="train-estimate")
        with gr.Column(scale=3):
            c["jobs"] = gr.Dataframe(headers=JOB_HEADERS, interactive=False, label="Jobs", elem_id="train-jobs")
            c["job"] = gr.Dropdown([], label="Selected job", elem_id="train-job", allow_custom_value=True)
            c["status"] = gr.Markdown(elem_id="train-status")
            c["loss"] = gr.LinePlot(x="step", y="loss", color="series", color_map=LOSS_SERIES, title="Loss",
                                    height=220, elem_id="train-loss")
            c["lr"] = gr.LinePlot(x="step", y="lr", title="Learning rate", height=120, elem_id="train-lr")
            c["samples"] = gr.Gallery(label="Samples over steps", columns=MIN_COLUMNS, fit_columns=False, height=320,
                                      object_fit="contain", elem_id="train-samples")  # a column: one prompt
            with gr.Row(equal_height=True):  # each enabled only while it applies to the selected job (refresh)
                c["stop"] = gr.Button("Stop", interactive=False, elem_id="train-stop")
                c["force"] = gr.Button("Force stop", variant="stop", interactive=False, elem_id="train-force")
                c["resume"] = gr.Button("Resume", interactive=False, elem_id="train-resume")
                c["command_message"] = gr.Markdown(elem_id="train-command-message")
            with gr.Row():  # a job that ran out of memory: resume with the settings its failure named
                c["resume_fit"] = gr.Button("Resume with these settings", visible=False, elem_id="train-resume-fit")
                c["fit_note"] = gr.Markdown(visible=False, elem_id="train-fit-note")
            c["downloads"] = gr.File(
                label="Downloads", file_count="multiple", interactive=False, elem_id="train-downloads"
            )
            c["downloads_note"] = gr.Markdown(elem_id="train-downloads-note")
            c["log"] = gr.Textbox(
                label="Log (latest lines)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False, elem_id="train-log"
            )
            with gr.Accordion("Job details", open=False):
                c["details"] = gr.JSON(label="Job", elem_id="train-details")
    c["timer"] = gr.Timer(REFRESH_S)
    _wire(studio, c)
    return c


VIEW = ("jobs", "job", "status", "loss", "samples", "log", "downloads", "details", "lr", "downloads_note",
        "stop", "force", "resume", "resume_fit", "fit_note")
"""The components every refresh sets (timer, job pick, commands, page load), in this order. The API leaves
buttons out, so its clients see jobs, job, status, loss, samples, log, downloads, details, lr, downloads_note
and fit_note: new parts go before the buttons, and the indices clients use stay where they were."""


def command_updates(job: dict[str, Any] | None) -> list[Any]:
    """Stop, Force stop and Resume, each clickable only when the supervisor would take it for this job: stop a
    queued or running one (Stop once: a stopping job only waits for its step), resume a RESUMABLE one."""
    status = (job or {}).get("status")
    return [gr.update(interactive=status in ACTIVE and not job.get("stopping")),
            gr.update(interactive=status in ACTIVE),
            gr.update(interactive=status in RESUMABLE)]


def fit_updates(job: dict[str, Any] | None) -> list[Any]:
    """The Resume-with-these-settings button and the note beside it: shown only for a job that failed out of
    memory with settings that fit (`job["suggested"]`)."""
    suggested = (job or {}).get("suggested")
    if not suggested:
        return [gr.update(visible=False), gr.update(value="", visible=False)]
    settings = ", ".join(f"`{key} = {json.dumps(value)}`" for key, value in suggested.items())
    return [gr.update(visible=True),
            gr.update(value=f"Fits with {settings}; continues from the last checkpoint.", visible=True)]


def refresh(studio: Studio, selected: str | None, pin: bool = False) -> list[Any]:
    """New values for VIEW: the job list, and the selected job (the newest when none is).

    The job picker's value is sent back only when it changes (`pin`: a command chose the job), so a timer
    tick that started before Start finished cannot put the previous job back in the picker.
    """
    jobs = studio.supervisor.list()
    studio.yield_gpu(jobs)
    ids = [j["id"] for j in jobs]
    chosen = selected if selected in ids else (ids[-1] if ids else None)
    picker = (
        gr.update(choices=job_choices(jobs), value=chosen)
        if pin or chosen != selected
        else gr.update(choices=job_choices(jobs))
    )
    values: dict[str, Any] = {"jobs": job_rows(jobs), "job": picker}
    job = None
    if chosen is None:
        values |= {"status": "No jobs yet: pick a dataset and press **Start training**.", "loss": None, "lr": None,
                   "samples": [], "log": "", "downloads": [], "downloads_note": "", "details": None}
    else:
        view = job_view(studio, chosen)
        job = view["job"]
        values |= {name: view[name] for name in ("status", "loss", "lr", "log", "downloads", "downloads_note")}
        values |= {"samples": gr.update(value=view["samples"], columns=view["sample_columns"]), "details": job}
    values |= dict(zip(("stop", "force", "resume"), command_updates(job), strict=True))
    values |= dict(zip(("resume_fit", "fit_note"), fit_updates(job), strict=True))
    return [values[name] for name in VIEW]


def run_command(studio: Studio, action: str, selected: str | None) -> list[Any]:
    """Stop, force-stop, resume or resume with the suggested settings (`fit`) the selected job; returns the
    message (shown beside the buttons) and VIEW."""
    if not selected:
        return ["Select a job first.", *refresh(studio, None, pin=True)]
    sup = studio.supervisor
    try:
        if action == "fit":
            return [resume_with_suggested(studio, selected), *refresh(studio, selected, pin=True)]
        result = sup.stop(selected, force=True) if action == "force" else getattr(sup, action)(selected)
    except StudioError as err:
        return [f"**Could not {'resume' if action == 'fit' else action}:** {err}",
                *refresh(studio, selected, pin=True)]
    new_id = result if action == "resume" and isinstance(result, str) else selected
    return [f"{action.capitalize()}: job **{selected}**.", *refresh(studio, new_id, pin=True)]


def resume_with_suggested(studio: Studio, job_id: str) -> str:
    """Resume a job that ran out of memory with the settings its failure suggested; returns the message."""
    from trainer.errors import JobError

    settings = studio.supervisor.show(job_id).get("suggested")
    if not settings:
        raise JobError("has no suggested settings (it did not fail out of memory)", where=f"job {job_id}",
                       fix="Use Resume instead.")
    studio.yield_gpu()  # as Start does: the resumed job gets the whole GPU
    studio.supervisor.resume(job_id, settings=settings)
    return f"Resumed job **{job_id}** with " + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in settings.items()) + "."


def _wire(studio: Studio, c: dict[str, Any]) -> None:
    fields: dict[str, Any] = c["fields"]
    params = {forms.param_name(key): key for key in fields}
    view_out = [c[name] for name in VIEW]

    def start(dataset: str | None, selected: str | None, **values: Any) -> list[Any]:
        named = {params[name]: value for name, value in values.items()}
        try:
            job_id = start_job(studio, named, dataset or "")
        except DatasetNotReady as err:
            return [err.markdown, *refresh(studio, selected, pin=True)]
        except StudioError as err:
            return [f"**Could not start:** {err}", *refresh(studio, selected, pin=True)]
        return [f"Queued job **{job_id}**.", *refresh(studio, job_id, pin=True)]

    def pick_dataset(name: str | None, lora_name: str | None, trigger: str | None) -> Any:
        """The picked dataset's trigger word and suggested LoRA name, each written only where it differs from what
        the event saw: a repeated change event then writes nothing, so it cannot land over a field typed since."""
        from app.datasets_tab import read_trigger

        suggested = forms.default_lora_name(name, lora_name, tuple(studio.dataset_names()))
        dataset_trigger = read_trigger(studio, name) if name else ""
        return forms.unless_shown(dataset_trigger, trigger or ""), gr.update() if suggested is None else suggested

    c["start"].click(
        start,
        [c["dataset"], c["job"]],
        [c["message"], *view_out],
        api_name="start_job",
        inputs_kwargs={forms.param_name(key): comp for key, comp in fields.items()},
        trigger_mode="once",
    )
    for action in ("stop", "force", "resume"):
        c[action].click(partial(run_command, studio, action), c["job"], [c["command_message"], *view_out],
                        api_name=f"{action}_job")
    c["resume_fit"].click(partial(run_command, studio, "fit"), c["job"], [c["command_message"], *view_out],
                          api_name="resume_with_suggested")
    c["timer"].tick(partial(refresh, studio), c["job"], view_out, api_name=False, show_progress="hidden")
    c["job"].input(partial(refresh, studio), c["job"], view_out, api_name="show_job")
    c["preset"].change(
        lambda p: [forms.preset_help(p), *[forms.preset_updates(p).get(k, gr.update()) for k in fields]],
        c["preset"],
        [c["preset_help"], *fields.values()],
        api_name=False,
    )
    memory = [fields[key] for key in MEMORY_FIELDS]
    for component in memory:
        component.change(lambda *v: estimate_text(dict(zip(MEMORY_FIELDS, v, strict=True)), studio.home), memory,
                         c["estimate"], api_name=False, trigger_mode="always_last")
    # Focus only refreshes the choices: it sees the dataset picked before, and as its own listener its reply can
    # land after the change's, so a name or trigger it suggested would be stale and overwrite what was typed.
    c["dataset"].focus(lambda: gr.update(choices=studio.dataset_names()), None, c["dataset"], api_name=False)
    c["dataset"].change(pick_dataset, [c["dataset"], fields["export.name"], fields["data.trigger_word"]],
                        [fields["data.trigger_word"], fields["export.name"]], api_name=False)
    c["on_load"] = (
        lambda job: [gr.update(choices=studio.dataset_names()), *refresh(studio, job)],
        [c["job"]],
        [c["dataset"], *view_out],
    )
