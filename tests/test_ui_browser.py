"""The product in a real browser (Playwright driving Debian's chromium): the whole flow by clicking, a
screenshot of each tab kept in test-artifacts/, and a server restart in the middle of a job.

    LORA_STUDIO_UPDATE_SCREENSHOT=1 pytest tests/test_ui_browser.py   # also refresh docs/screenshot.png
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from uiserver import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, start_server, stop_server

EXAMPLE = ROOT / "datasets" / "example"
WAIT_MS = 180_000


@pytest.fixture(autouse=True)
def _chromium():
    """A missing browser fails each browser test (not a skip, and not a collection error that stops the run)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)", pytrace=False)


def pick(page, elem_id: str, value: str) -> None:
    """Type into a gradio dropdown (they take custom values here) and confirm it."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    box.press("Enter")
    page.keyboard.press("Escape")


def set_number(page, elem_id: str, value: str) -> None:
    """Set a slider or number field through its number box."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def wait_status(page, pattern: str, timeout_ms: int = WAIT_MS) -> None:
    page.wait_for_function(
        "([sel, pat]) => new RegExp(pat).test(document.querySelector(sel)?.innerText || '')",
        arg=["#train-status", pattern],
        timeout=timeout_ms,
    )


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def start_training(page, name: str, steps: str) -> None:
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Quick test").check()
    pick(page, "train-dataset", "shapes")
    page.locator("#field-export-name textarea, #field-export-name input").first.fill(name)
    set_number(page, "field-train-steps", steps)
    pick(page, "field-data-resolution", "64")
    if not page.locator("#field-sample-steps input[type=number]").first.is_visible():
        page.get_by_text("Samples during training").click()
    set_number(page, "field-sample-steps", "2")
    page.locator("#train-start").click()
    page.wait_for_function(
        "() => /Queued job/.test(document.querySelector('#train-message')?.innerText || '')", timeout=60_000
    )


@pytest.mark.slow
def test_the_whole_flow_by_clicking_and_a_restart_mid_job(tmp_path):
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    servers = [start_server(home)]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                _flow(page, servers, home)
            except Exception:
                shot(page, "failure")  # what the browser showed when it went wrong
                raise
            finally:
                browser.close()
    finally:
        for server in servers:
            stop_server(server)
        _stop_jobs(home)


def _flow(page, servers: list, home: Path) -> None:
    """Click through the product; the server restarts once (a new one is appended to `servers`)."""
    page.goto(servers[0].url)

    # Datasets: a new dataset from images and captions, seen in the gallery
    page.get_by_role("tab", name="Datasets").click()
    pick(page, "ds-name", "shapes")
    files = sorted(str(f) for f in EXAMPLE.iterdir() if f.suffix in (".png", ".txt"))
    page.locator("#ds-upload input[type=file]").set_input_files(files)
    page.wait_for_timeout(500)
    page.locator("#ds-import").click()
    page.wait_for_function(
        "() => /Copied \\d+ file/.test(document.querySelector('#ds-message')?.innerText || '')",
        timeout=60_000,
    )
    page.locator("#ds-gallery img").first.wait_for(timeout=30_000)
    page.locator("#ds-doctor").click()
    page.wait_for_function(
        "() => (document.querySelector('#ds-report textarea')?.value || '').length > 20", timeout=60_000
    )
    shot(page, "datasets")

    # Train: Quick test preset, a few steps, watched to the end
    start_training(page, "shapes", "4")
    wait_status(page, r"\bdone\b")
    page.locator("#train-samples img").first.wait_for(timeout=30_000)
    downloads = page.locator("#train-downloads").inner_text().replace("\n", "")
    assert "shapes.safetensors" in downloads and "shapes.peft.safetensors" in downloads
    assert "config.toml" in downloads
    train_png = shot(page, "train")
    if os.environ.get("LORA_STUDIO_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on request only
        shutil.copyfile(train_png, ROOT / "docs" / "screenshot.png")

    # Generate: the new LoRA from the library, one seeded preview
    page.get_by_role("tab", name="Generate").click()
    pick(page, "gen-lora-0", "shapes")
    page.locator("#gen-prompt textarea").fill("a red square")
    set_number(page, "gen-steps", "2")
    page.locator("#gen-go").click()
    page.wait_for_function(
        "() => /shapes × 1/.test(document.querySelector('#gen-info')?.innerText || '')", timeout=90_000
    )
    assert page.locator("#gen-image img").count() == 1
    shot(page, "generate")

    # A long job; the server restarts under it; the job is still listed and can be stopped
    start_training(page, "long", "5000")
    wait_status(page, r"\brunning\b")  # its runner process is up; the server restarts while it loads and trains
    job_id = page.locator("#train-job input").first.input_value().split(" ")[0]
    stop_server(servers[-1])
    servers.append(start_server(home))
    page.goto(servers[-1].url)
    page.get_by_role("tab", name="Train").click()
    wait_status(page, r"\brunning\b", timeout_ms=60_000)
    assert re.search(job_id, page.locator("#train-jobs").inner_text())
    page.locator("#train-stop").click()
    wait_status(page, r"\bstopped\b", timeout_ms=120_000)
    page.wait_for_function(  # a graceful stop still hands over the LoRA trained so far
        "() => /long\\.safetensors/.test(document.querySelector('#train-downloads')?.innerText.replace(/\\n/g, ''))",
        timeout=30_000,
    )
    shot(page, "train-stopped")


def _stop_jobs(home: Path) -> None:
    """Kill any runner this test left behind (a failed assertion must not leave training processes)."""
    from trainer.jobs import Supervisor

    sup = Supervisor(home)
    for job in sup.list():
        if job["status"] in ("running", "queued"):
            sup.stop(job["id"], force=True)
