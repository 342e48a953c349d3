"""Take the README's screenshots from the real product: a server, a browser, the example dataset trained.

    python tools/screenshots.py                 # writes docs/screenshot.png and docs/strength-grid.png

It starts `lora-studio serve` on 127.0.0.1 with a scratch home holding `datasets/example` as the dataset
`shapes`, clicks through the Train tab with the README's quick run (samples every 100 steps at 20 denoising
steps, three vocabulary prompts), waits for the job to finish and shoots the Train tab; then it renders a grid
of the new LoRA at strengths 0, 0.5 and 1 on the Generate tab and shoots that. Needs Debian's chromium and
Playwright (the test extra); about five minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from style_lora import PROMPTS, QUICK_RUN  # noqa: E402
from test_ui_browser import EXAMPLE, pick, set_number, wait_status, wait_text, wait_value  # noqa: E402
from uiserver import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server  # noqa: E402

FLAG_FIELDS = {"--steps": "train.steps", "--rank": "network.rank", "--alpha": "network.alpha",
               "--lr": "optim.learning_rate", "--save-every": "train.save_every"}
"""The quick run's flags and the Train tab's fields they set (its --data and --name are the dataset pick)."""
WAIT_MS = 900_000
LOADED = "(sel) => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"
"""Every image under a selector has been fetched and decoded (the gallery fetches its files after the reply)."""


def quick_run_fields() -> dict[str, str]:
    flags = dict(zip(QUICK_RUN[::2], QUICK_RUN[1::2], strict=True))
    return {FLAG_FIELDS[flag]: value for flag, value in flags.items() if flag in FLAG_FIELDS}


def train_quick_run(page) -> None:
    page.get_by_role("tab", name="Train").click()
    pick(page, "train-dataset", "shapes")
    wait_value(page, "field-export-name", "^shapes$")
    page.wait_for_timeout(1500)  # the dataset pick's second reply (the trigger word) lands before we type
    page.get_by_text("Advanced", exact=True).click()  # alpha and checkpoints live there
    page.locator("#field-network-alpha input").first.wait_for(timeout=30_000)
    for key, value in quick_run_fields().items():
        set_number(page, "field-" + key.replace(".", "-"), value)
    if not page.locator("#field-sample-steps input[type=number]").first.is_visible():
        page.get_by_text("Samples during training").click()
    set_number(page, "field-sample-every_n_steps", "100")
    page.locator("#field-sample-prompts textarea").first.fill("\n".join(PROMPTS))
    page.locator("#train-start").click()
    wait_text(page, "#train-message", "Queued job")
    wait_status(page, r"\bdone\b", timeout_ms=WAIT_MS)
    page.wait_for_function("(n) => document.querySelectorAll('#train-samples img').length >= n",
                           arg=3 * len(PROMPTS), timeout=60_000)  # three sample steps of every prompt
    page.get_by_text("Advanced", exact=True).click()  # closed again: the picture shows the live view
    page.wait_for_function(LOADED, arg="#train-samples img", timeout=60_000)


def strength_grid(page, out: Path) -> None:
    page.get_by_role("tab", name="Generate").click()
    wait_text(page, "#gen-library", r"^1 LoRA in the library\.", timeout_ms=30_000)
    pick(page, "gen-lora-0", "shapes")
    page.get_by_text("Grid: prompts × strengths").click()
    page.locator("#gen-grid-prompts textarea").fill("\n".join(PROMPTS))
    page.locator("#gen-grid").click()
    wait_text(page, "#gen-info", "prompts × strengths", timeout_ms=WAIT_MS)
    page.wait_for_function(LOADED, arg="#gen-image img", timeout=60_000)
    source = page.locator("#gen-image img").first.get_attribute("src")
    out.write_bytes(page.request.get(source).body())  # the grid the server made, without the widget's buttons


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the two PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        shutil.copytree(EXAMPLE, home / "datasets" / "shapes")
        server = start_server(home)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(server.url)
                try:
                    train_quick_run(page)
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path=str(out / "screenshot.png"))
                    strength_grid(page, out / "strength-grid.png")
                except Exception:
                    page.screenshot(path=str(out / "screenshots-failure.png"), full_page=True)
                    raise
                finally:
                    browser.close()
        finally:
            stop_server(server)
    print(f"wrote {out / 'screenshot.png'} and {out / 'strength-grid.png'}")


if __name__ == "__main__":
    main()
