"""A real `lora-studio serve` on 127.0.0.1: what it serves, what uploads it takes, its login, and the whole
product driven over its API (upload, train, poll, download, load in diffusers, preview).

One server serves the whole module (starting one costs seconds); the login test starts its own."""

from __future__ import annotations

import json
import time
import urllib.parse
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from uiserver import ROOT, http_status, running_server

from app import forms
from trainer.config import TrainConfig, load_config
from trainer.models.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-server") / "home"
    with running_server(home, "--max-upload-mb", "1", "--max-upload-files", "3") as srv:
        yield srv


def file_url(server, path) -> str:
    return f"{server.url}/gradio_api/file={urllib.parse.quote(str(path))}"


def test_only_files_under_home_are_served(server, tmp_path):
    lora = server.home / "loras" / "mine.safetensors"
    lora.write_bytes(b"not really a lora")
    assert http_status(file_url(server, lora)) == (200, b"not really a lora")

    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    for path in [
        "/etc/passwd",
        outside,
        f"{server.home}/../../../../etc/passwd",
        f"{server.home}/../secret.txt",
    ]:
        status, body = http_status(file_url(server, path))
        assert status == 403, (path, status)
        assert b"root:" not in body and b"secret" not in body.replace(b"secret.txt", b"")
    # the job database is inside <home> but never served
    Client(server.url, verbose=False).predict(None, api_name="/show_job")  # the job list opens the database
    assert (server.home / "studio.sqlite").is_file()
    assert http_status(file_url(server, server.home / "studio.sqlite"))[0] == 403
    # the legacy route and a raw (unquoted) traversal are refused too
    assert http_status(f"{server.url}/gradio_api/file/etc/passwd")[0] in (403, 404)
    raw = httpx.get(f"{server.url}/gradio_api/file=/etc/passwd")
    assert raw.status_code == 403


def test_an_oversized_upload_is_refused(server):
    big = b"\x00" * (1024 * 1024 + 10)
    response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("big.png", big, "image/png")})
    assert response.status_code == 413, response.text
    small = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("small.png", b"\x89PNG", "image/png")})
    assert small.status_code == 200


def test_too_many_files_in_one_upload_are_refused(server, tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(path)
        paths.append(path)
    client = Client(server.url, verbose=False)
    message = client.predict("toomany", [handle_file(p) for p in paths], api_name="/import_files")[0]
    assert "more than the limit of 3" in message
    assert not (server.home / "datasets" / "toomany").exists()


def test_a_dataset_name_that_escapes_is_refused(server, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(path)
    client = Client(server.url, verbose=False)
    message = client.predict("../../escaped", [handle_file(path)], api_name="/import_files")[0]
    assert "not allowed" in message
    assert not (server.home.parent / "escaped").exists()
    assert not list(server.home.parent.parent.glob("escaped"))


def test_a_network_server_needs_its_login(tmp_path):
    with running_server(tmp_path / "home", "--auth", "ann:s3cret", host="0.0.0.0") as srv:
        assert httpx.get(f"{srv.url}/config").status_code == 401
        with httpx.Client(base_url=srv.url) as web:
            bad = web.post("/login", data={"username": "ann", "password": "wrong"})
            assert bad.status_code == 400
            good = web.post("/login", data={"username": "ann", "password": "s3cret"})
            assert good.status_code == 200
            config = web.get("/config")
            assert config.status_code == 200 and "components" in json.loads(config.text)


def test_zips_create_a_dataset_and_add_to_it(server, tmp_path):
    import zipfile

    def make_zip(name: str, stems: list[str]) -> str:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            for stem in stems:
                image = tmp_path / f"{stem}.png"
                Image.new("RGB", (64, 64), (200, 10, 10)).save(image)
                zf.write(image, f"{stem}.png")
                zf.writestr(f"{stem}.txt", f"a red {stem}")
        return str(path)

    client = Client(server.url, verbose=False)
    first = client.predict("zipped", [handle_file(make_zip("one.zip", ["a", "b"]))], api_name="/import_files")
    assert "Imported 2 images" in first[0], first[0]
    second = client.predict("zipped", [handle_file(make_zip("two.zip", ["c"]))], api_name="/import_files")
    assert "Imported 1 image" in second[0], second[0]
    folder = server.home / "datasets" / "zipped"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt", "b.png", "b.txt", "c.png", "c.txt"]
    assert (folder / "c.txt").read_text() == "a red c"
    assert len(second[2]) == 3  # the gallery shows all three images
    assert not list((server.home / ".gradio").glob("import-*"))  # the scratch folder is gone


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
def test_start_refuses_a_missing_or_refused_dataset_before_queueing(server):
    broken = server.home / "datasets" / "broken"
    broken.mkdir(parents=True)
    for i in range(3):  # three truncated PNGs: one check, three files, its fix said once
        data = (EXAMPLE / "00.png").read_bytes()
        (broken / f"bad{i}.png").write_bytes(data[: len(data) // 3])
        (broken / f"bad{i}.txt").write_text("a shape")
    client = Client(server.url, verbose=False)
    jobs_before = client.predict(None, api_name="/show_job")[0]
    message = client.predict("broken", None, api_name="/start_job", **quick_form(export_name="broken"))[0]
    assert message.startswith("**Could not start:** the dataset doctor refused **broken**"), message
    assert "\n- **bad-image** (3 files)" in message
    assert all(f"  - `bad{i}.png`" in message for i in range(3))
    assert message.count("Re-export it or remove it.") == 1, message
    assert "\n- **no-usable-images**: `broken` has no usable images" in message
    missing = client.predict("nosuch", None, api_name="/start_job", **quick_form(export_name="nosuch"))[0]
    assert "dataset 'nosuch' does not exist" in missing and "Datasets tab" in missing
    assert client.predict(None, api_name="/show_job")[0] == jobs_before  # nothing was queued
    assert "Traceback" not in server.output()


def test_upload_train_download_and_preview_over_the_api(server, tmp_path):
    """The whole product over its API: upload, train, poll, download, load in diffusers, preview."""
    archive = zip_dataset(EXAMPLE, tmp_path / "shapes.zip")
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
        **quick_form(export_name="shapes", train_steps=4, data_resolution="64", sample_every_n_steps=4, sample_steps=2),
    )
    assert "Queued job" in result[0], result[0]
    job_id = result[8]["id"]
    done = poll_job(client, job_id, ("done", "failed", "stopped", "interrupted"), timeout_s=150)
    assert done["status"] == "done", client.predict(job_id, api_name="/show_job")[5]
    view = client.predict(job_id, api_name="/show_job")
    assert "**done** · step 4/4" in view[2]
    log_dir = Path(done["tensorboard_log_dir"])  # TensorBoard is in the test extra, so runs log to it
    assert f"tensorboard --logdir {log_dir}" in view[2] and any(log_dir.rglob("events.out.tfevents.*"))
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
    assert "shapes × 1" in at1[1] and "LoRA swap took" in at1[1], at1[1]
    assert np.array_equal(pixels(base[0]), pixels(at0[0]))
    assert np.abs(pixels(base[0]) - pixels(at1[0])).max() > 0
    fused = client.predict(**common, **none | {"lora_1": "shapes", "strength_1": 1.0}, fuse=True, api_name="/generate")
    assert "fused into the base weights" in fused[1], fused[1]
    assert np.abs(pixels(fused[0]) - pixels(at1[0])).max() <= 1  # float32 rounding may move a pixel by one step
    assert np.array_equal(pixels(client.predict(**common, **none, api_name="/generate")[0]), pixels(base[0]))

    # a prompt x strength grid, and a broken third-party file that is refused and not kept
    grid = client.predict(
        lora="shapes",
        prompts="a red square\na blue ball",
        strengths="0, 1",
        **common | {"steps": 1},
        api_name="/grid",
    )
    assert Image.open(grid[0]).size[0] >= 2 * 64 and "2 prompts" in grid[1]
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 64)
    added = client.predict(handle_file(bad), "", api_name="/add_lora")
    assert "Error" in added[0] and "broken" in added[0], added[0]
    assert not (server.home / "loras" / "broken.safetensors").exists()
