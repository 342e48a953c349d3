"""Build and launch the LoRA Studio web app: three tabs over one `Studio` (home, jobs, adapter pool).

    lora-studio serve --home ~/.lora-studio            # the normal way (trainer/cli/serve.py)
    demo = build_app(Studio(home)); launch(demo, studio, host="127.0.0.1", port=7860)

Security settings (what is served, upload limits, auth) come from `app/security.py`; `app/guard.py` checks
every request (Host, Origin, served paths, uploads, login attempts) before gradio sees it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import gradio as gr
from starlette.middleware import Middleware

from app import datasets_tab, generate_tab, persist, train_tab
from app.apitypes import StudioBlocks
from app.guard import Guard, GuardSettings
from app.security import blocked_paths, machine_names
from app.studio import Studio
from app.uploads import sweep_uploads

INTRO = """# LoRA Studio
**1.** Upload captioned images in **Datasets** · **2.** pick a preset and press **Start training** in
**Train** (watch the loss and samples live) · **3.** try your LoRA at several strengths in **Generate**.
"""
UPLOAD_MAX_AGE_S = 3600
"""Seconds an upload that no dataset or library took is kept before it is deleted."""


def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI; every tab's handlers close over `studio`."""
    # uploads no handler took are deleted an hour after they landed (gradio's own cache sweep)
    with StudioBlocks(title="LoRA Studio", analytics_enabled=False, delete_cache=(600, UPLOAD_MAX_AGE_S)) as demo:
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs():
            with gr.Tab("Datasets", id="datasets", elem_id="tab-datasets"):
                datasets = datasets_tab.build(studio)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = train_tab.build(studio)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate = generate_tab.build(studio)
        # the forms and the selected job are kept in the browser, so a server restart (the page reloads
        # itself when it reconnects) loses nothing typed; the preset is left out: choosing one sets fields
        saved = {}
        for prefix, tab in (("datasets", datasets), ("train", train), ("generate", generate)):
            saved |= persist.value_components(prefix, tab, skip=("on_load", "preset", "trigger"))
        loads = [tab["on_load"] for tab in (datasets, train, generate)]
        persist.attach(demo, saved, loads, persist.secret(studio.home))
    return demo


def launch(
    studio: Studio,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: Sequence[tuple[str, str]] = (),
    block: bool = True,
    allowed_hosts: Sequence[str] = (),
) -> gr.Blocks:
    """Serve the app: only `<home>` is served (minus the job database), uploads capped, no share link."""
    # uploads and gradio's own copies of served files stay under <home> instead of a world-readable /tmp
    os.environ.setdefault("GRADIO_TEMP_DIR", str(studio.home / ".gradio"))
    sweep_uploads(studio.home / ".gradio")  # nothing there belongs to a live session yet
    demo = build_app(studio)
    settings = GuardSettings(
        home=studio.home,
        upload_dir=studio.upload_dir,
        names=machine_names() + ([host] if host not in ("0.0.0.0", "::") else []),
        proxied=list(allowed_hosts),
        max_files=studio.max_upload_files,
        max_file_bytes=studio.max_upload_mb * 1024 * 1024,
    )
    demo.queue(default_concurrency_limit=4)
    studio.start_idle_watch()
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        auth=list(auth) or None,
        allowed_paths=[str(studio.home)],
        blocked_paths=blocked_paths(studio.home),
        max_file_size=f"{studio.max_upload_mb}mb",
        prevent_thread_lock=not block,
        footer_links=["api", "settings"],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        theme=gr.themes.Soft(),
        quiet=False,
        app_kwargs={"middleware": [Middleware(Guard, settings=settings)]},
    )
    return demo
