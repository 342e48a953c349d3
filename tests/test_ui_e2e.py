"""The whole product over its API, against a real server: upload, train, poll, download, load, preview."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from uiserver import ROOT, running_server

from app import forms
from trainer.config import TrainConfig, load_config
from trainer.models.tiny import build_tiny_pipeline

EXAMPLE = ROOT / "datasets" / "example"


def zip_dataset(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, path.name)
    return archive


def quick_form(**overrides) -> dict:
    """The Train form as the API takes it: every field by its parameter name, Quick test preset applied."""
    values = forms.config_to_values(TrainConfig()) | forms.preset_updates("Quick test")
    return {forms.param_name(k): v for k, v in values.items()} | overrides


def poll_job(client: Client, job_id: str, until: tuple[str, ...], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        details = client.predict(job_id, api_name="/show_job")[7]
        if details["status"] in until:
            return details
        assert time.monotonic() < deadline, f"job {job_id} still {details['status']} after {timeout_s}s"
        time.sleep(1)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_upload_train_download_and_preview_over_the_api(tmp_path):
    archive = zip_dataset(EXAMPLE, tmp_path / "shapes.zip")
    with running_server(tmp_path / "home") as server:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))

        # a dataset from a zip, through the safe import
        message = client.predict("shapes", [handle_file(archive)], api_name="/import_files")[0]
        assert "shapes" in message and "Error" not in message, message
        images = [p for p in (server.home / "datasets" / "shapes").iterdir() if p.suffix == ".png"]
        assert len(images) == len([p for p in EXAMPLE.iterdir() if p.suffix == ".png"])
        report = client.predict("shapes", api_name="/doctor")
        assert "0 errors" in report, report

        # captions edited in the table are saved beside their images; rows naming other files are refused
        table = client.predict("shapes", api_name="/show_dataset")[2]
        first = table["data"][0][0]
        edited = {"headers": ["file", "caption"], "data": [[first, "lsstyle, an edited caption"]]}
        assert "Saved 1 caption" in client.predict("shapes", edited, api_name="/save_captions")
        caption_file = (server.home / "datasets" / "shapes" / first).with_suffix(".txt")
        assert caption_file.read_text() == "lsstyle, an edited caption"
        hostile = {"headers": ["file", "caption"], "data": [["../../../../etc/passwd", "owned"]]}
        assert "Error" in client.predict("shapes", hostile, api_name="/save_captions")
        assert "lsstyle" in client.predict("shapes", "lsstyle", api_name="/save_trigger")

        # a job from the form; it trains in its own process and the view follows it
        result = client.predict(
            "shapes",
            None,
            api_name="/start_job",
            **quick_form(
                export_name="shapes", train_steps=4, data_resolution="64", sample_every_n_steps=4, sample_steps=2
            ),
        )
        assert "Queued job" in result[0], result[0]
        job_id = result[8]["id"]
        done = poll_job(client, job_id, ("done", "failed", "stopped", "interrupted"), timeout_s=150)
        assert done["status"] == "done", client.predict(job_id, api_name="/show_job")[5]
        view = client.predict(job_id, api_name="/show_job")
        assert "**done** · step 4/4" in view[2]
        assert view[4], "the latest samples are shown"

        # the downloads: both LoRA files and the config
        downloads = {Path(f).name: Path(f) for f in view[6]}
        assert {"shapes.safetensors", "shapes.peft.safetensors", "config.toml"} <= set(downloads)
        config = load_config(downloads["config.toml"])  # the CLI reads what the form wrote
        assert (config.train.steps, config.export.name, config.data.resolution) == (4, "shapes", 64)

        # the downloaded file loads in a fresh diffusers pipeline, on every attention projection
        pipe = build_tiny_pipeline("sd15")
        pipe.load_lora_weights(str(downloads["shapes.safetensors"]), adapter_name="shapes")
        targets = [m for n, m in pipe.unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
        assert targets and all("shapes" in getattr(m, "lora_A", {}) for m in targets)

        def run(scale: float) -> np.ndarray:
            pipe.set_adapters(["shapes"], [scale])
            out = pipe(
                "a red square",
                num_inference_steps=2,
                generator=torch.manual_seed(0),
                height=64,
                width=64,
                output_type="np",
            )
            return out.images[0]

        assert not np.array_equal(run(0.0), run(1.0))

        # previews through the UI's adapter pool: strength 0 is the base image exactly, 1 is not
        common = dict(prompt="a red square", seed=3, steps=2, width=64, height=64)
        none = dict(lora_1="", strength_1=1.0, lora_2="", strength_2=1.0, lora_3="", strength_3=1.0)
        base = client.predict(**common, **none, api_name="/generate")
        at0 = client.predict(**common, **none | {"lora_1": "shapes", "strength_1": 0.0}, api_name="/generate")
        at1 = client.predict(**common, **none | {"lora_1": "shapes", "strength_1": 1.0}, api_name="/generate")
        assert "shapes × 1" in at1[1], at1[1]
        assert np.array_equal(pixels(base[0]), pixels(at0[0]))
        assert np.abs(pixels(base[0]) - pixels(at1[0])).max() > 0

        # a prompt x strength grid, and a broken third-party file that is refused and not kept
        grid = client.predict(
            lora="shapes",
            prompts="a red square\na blue ball",
            strengths="0, 1",
            **common | {"steps": 1},
            api_name="/grid",
        )
        assert Image.open(grid[0]).size[0] >= 2 * 64 and "2 prompt(s)" in grid[1]
        bad = tmp_path / "broken.safetensors"
        bad.write_bytes(b"\xff" * 64)
        added = client.predict(handle_file(bad), "", api_name="/add_lora")
        assert "Error" in added[0] and "broken" in added[0], added[0]
        assert not (server.home / "loras" / "broken.safetensors").exists()
