"""Hostile input against a real `lora-studio serve` on 127.0.0.1: each probe is an HTTP request (httpx) or an
API call (gradio_client) an attacker or a careless script could send. One server (with a login, so the
login limit is real) serves the module; the README's Security section counts these probes.

Probes: links out of a dataset, the job database by other names, uploaded pages and SVGs, a foreign Host
header, cross-origin requests, too many files in one upload, uploads left behind, a huge grid, repeated
failed logins, and wrong types through the API.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from uiserver import ROOT, running_server

from app import forms
from trainer.config import TrainConfig

LOGIN = ("ann", "s3cret")
MAX_FILES = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("hostile") / "home"
    (home / ".gradio" / "old").mkdir(parents=True)
    (home / ".gradio" / "old" / "left-behind.png").write_bytes(b"from an earlier run")
    with running_server(
        home,
        *("--auth", ":".join(LOGIN), "--max-upload-files", str(MAX_FILES), "--max-upload-mb", "1"),
        *("--allowed-host", "studio.example"),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def web(server):
    """An httpx client logged in from 127.0.0.1."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200
        yield client


@pytest.fixture(scope="module")
def api(server):
    return Client(server.url, auth=LOGIN, verbose=False)


def quick_form(**overrides) -> dict:
    """The Train form as the API takes it (the Quick test preset), with `overrides`."""
    values = forms.config_to_values(TrainConfig()) | forms.preset_updates("Quick test")
    return {forms.param_name(k): v for k, v in values.items()} | overrides


def file_url(path: Path | str) -> str:
    return f"/gradio_api/file={urllib.parse.quote(str(path))}"


def png(path: Path, color=(200, 10, 10)) -> Path:
    Image.new("RGB", (64, 64), color).save(path)
    return path


def gallery_caption(item) -> str:
    return item.get("caption") if isinstance(item, dict) else item[1]


def upload_dir_files(server) -> set[Path]:
    return {p for p in (server.home / ".gradio").rglob("*") if p.is_file()}


def refused(call, *args, **kwargs) -> str:
    """The message of an API call the server refused (gr.Error), or of the "**Error:**" reply it gave."""
    try:
        result = call(*args, **kwargs)
    except AppError as err:
        return str(err)
    text = result if isinstance(result, str) else " ".join(str(r) for r in result if isinstance(r, str))
    assert "Error" in text or "Could not" in text, result
    return text


# 2. nothing from outside <home> is served


def test_links_out_of_a_dataset_are_not_shown_or_served(server, web, api, tmp_path):
    folder = server.home / "datasets" / "linked"
    folder.mkdir(parents=True)
    png(folder / "mine.png")
    (folder / "mine.txt").write_text("my own image")
    secret = png(tmp_path / "secret.png", (1, 2, 3))  # under /tmp, outside <home>
    (folder / "tmp.png").symlink_to(secret)
    (folder / "tmp.txt").write_text("a secret")
    cwd_image = next((ROOT / "datasets" / "example").glob("*.png"))  # in the server's working directory
    (folder / "cwd.png").symlink_to(cwd_image)
    outside = tmp_path / "outside"
    outside.mkdir()
    png(outside / "deep.png", (4, 5, 6))
    (folder / "sub").symlink_to(outside, target_is_directory=True)

    _, gallery, table, _ = api.predict("linked", api_name="/show_dataset")
    assert [gallery_caption(item) for item in gallery] == ["my own image"], gallery
    assert [row[0] for row in table["data"]] == ["mine.png"]
    for link in ("tmp.png", "cwd.png", "sub/deep.png"):
        assert web.get(file_url(folder / link)).status_code == 403, link
    assert web.get(file_url(folder / "mine.png")).status_code == 200


def test_the_job_database_is_not_served_by_any_name(server, web, api):
    api.predict(None, api_name="/show_job")  # the job list opens the database
    db = server.home / "studio.sqlite"
    assert db.is_file()
    (server.home / "datasets" / "dbs").mkdir(parents=True, exist_ok=True)
    names = {
        "capital link": server.home / "datasets" / "dbs" / "DB.png",
        "Studio.sqlite link": server.home / "Studio.sqlite",
        "STUDIO.SQLITE link": server.home / "loras" / "STUDIO.SQLITE",
    }
    for path in names.values():
        path.symlink_to(db)
    hardlink = server.home / "loras" / "Copy.safetensors"
    os.link(db, hardlink)
    names["hard link"] = hardlink
    names["spelled with capitals"] = Path(str(db).replace("studio.sqlite", "STUDIO.sqlite"))
    for what, path in names.items():
        response = web.get(file_url(path))
        assert response.status_code == 403, what
        assert b"SQLite format" not in response.content, what


# 3. no stored script on the studio's origin


@pytest.mark.parametrize("name, kind", [("x.html", "text/html"), ("x.svg", "image/svg+xml"), ("x.js", "text/js")])
def test_uploads_that_could_run_as_a_page_are_refused(server, web, name, kind):
    before = upload_dir_files(server)
    response = web.post("/gradio_api/upload", files={"files": (name, b"<script>alert(1)</script>", kind)})
    assert response.status_code == 415, response.text
    assert name in response.text and "PNG" in response.text
    assert upload_dir_files(server) == before


def test_served_files_cannot_run_as_a_page(server, web):
    page = b"<html><script>alert(1)</script>"
    sneaky = web.post("/gradio_api/upload", files={"files": ("pic.png", page, "text/html")})
    assert sneaky.status_code == 200
    served = web.get(file_url(sneaky.json()[0]))
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]
    page = server.home / "loras" / "page.html"  # a page that got into <home> some other way
    page.write_text("<script>alert(1)</script>")
    served = web.get(file_url(page))
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["content-type"] == "application/octet-stream"


# 4. only the studio's own pages can talk to it


def test_a_foreign_host_header_is_refused(server, web):
    image = png(server.home / "datasets" / "linked" / "host.png") if (server.home / "datasets" / "linked").is_dir() \
        else png(server.home / "loras" / "host.png")
    port = urllib.parse.urlsplit(server.url).port
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", ""):
        response = web.get(file_url(image), headers={"host": host})
        assert response.status_code in (400, 403), host
        assert b"\x89PNG" not in response.content
    assert web.get(file_url(image), headers={"host": f"localhost:{port}"}).status_code == 200
    assert web.get(file_url(image), headers={"host": f"127.0.0.1:{port}"}).status_code == 200
    assert web.get(file_url(image), headers={"host": "studio.example"}).status_code == 200  # --allowed-host


def test_cross_origin_requests_are_refused(server, web):
    port = urllib.parse.urlsplit(server.url).port
    before = upload_dir_files(server)
    files = {"files": ("a.png", b"\x89PNG", "image/png")}
    for headers in (
        {"origin": "http://attacker.example"},
        {"origin": f"http://localhost:{port + 1}"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
    ):
        response = web.post("/gradio_api/upload", files=files, headers=headers)
        assert response.status_code == 403, headers
        assert web.post("/gradio_api/queue/join", json={}, headers=headers).status_code == 403, headers
    assert upload_dir_files(server) == before
    assert web.post("/gradio_api/upload", files=files, headers={"origin": server.url}).status_code == 200
    proxied = {"origin": "https://studio.example"}  # the page came through the --allowed-host proxy
    assert web.post("/gradio_api/upload", files=files, headers=proxied).status_code == 200


def test_too_many_files_in_one_request_land_nowhere(server, web, tmp_path):
    before = upload_dir_files(server)
    image = png(tmp_path / "one.png").read_bytes()
    parts = [("files", (f"{i}.png", image, "image/png")) for i in range(MAX_FILES + 1)]
    response = web.post("/gradio_api/upload", files=parts)
    assert response.status_code == 413 and f"more than {MAX_FILES} files" in response.text
    assert upload_dir_files(server) == before
    assert web.post("/gradio_api/upload", files=parts[:MAX_FILES]).status_code == 200


def test_uploads_are_cleaned_up(server, api, tmp_path):
    assert not (server.home / ".gradio" / "old").exists(), "uploads of an earlier run are swept at start"
    caption = tmp_path / "notes.txt"
    caption.write_text("a caption no gallery shows")
    message = api.predict("cleaned", [handle_file(caption)], api_name="/import_files")[0]
    assert "Copied 1 file" in message, message
    assert (server.home / "datasets" / "cleaned" / "notes.txt").is_file()
    assert not [p for p in upload_dir_files(server) if p.name == "notes.txt"]  # taken: the upload is gone
    message = api.predict("bad name!", [handle_file(png(tmp_path / "two.png"))], api_name="/import_files")[0]
    assert "not allowed" in message
    assert not [p for p in upload_dir_files(server) if p.name == "two.png"]  # refused: gone too


# 5. bounded work


def test_a_huge_grid_is_refused_before_any_image(api):
    text = refused(
        api.predict,
        lora="anything",
        prompts="\n".join(f"prompt {i}" for i in range(9)),
        strengths=", ".join(str(i / 10) for i in range(8)),
        prompt="x",
        negative_prompt="",
        seed=0,
        steps=1,
        guidance=1.0,
        width=64,
        height=64,
        api_name="/grid",
    )
    assert "72 images" in text and "limit of 64" in text, text


def test_the_pool_refuses_a_huge_grid():
    from trainer.errors import StudioError
    from trainer.generate import AdapterPool

    pool = AdapterPool("tiny", device="cpu")
    with pytest.raises(StudioError, match="limit of 64"):
        pool.grid([f"p{i}" for i in range(13)], strengths=[0, 0.25, 0.5, 0.75, 1], loras=["any"])


def test_failed_logins_are_rate_limited_per_address(server):
    other = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other:
        codes = [other.post("/login", data={"username": "ann", "password": f"guess{i}"}).status_code for i in range(5)]
        assert codes == [400] * 5
        blocked = other.post("/login", data={"username": LOGIN[0], "password": LOGIN[1]})
        assert blocked.status_code == 429 and "too many failed logins from 127.0.0.2" in blocked.text
        assert int(blocked.headers["retry-after"]) > 0
    with httpx.Client(base_url=server.url) as mine:  # another address still logs in
        assert mine.post("/login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200


# 6. every bad value gets a specific error


GENERATE = dict(prompt="a cat", negative_prompt="", steps=1, guidance=1.0, width=64, height=64)
NO_LORA = dict(lora_1="", strength_1=1.0, lora_2="", strength_2=1.0, lora_3="", strength_3=1.0)


@pytest.mark.parametrize(
    "call, expected",
    [
        (dict(args=(123,), api_name="/show_dataset"), "Dataset must be text, got int 123"),
        (dict(args=(["a"],), api_name="/doctor"), "Dataset must be text, got list"),
        (dict(args=("linked", "oops"), api_name="/save_captions"), "must be a table"),
        (dict(kwargs=GENERATE | NO_LORA | {"seed": "abc"}, api_name="/generate"), "Seed must be a number, got str"),
        (dict(kwargs=GENERATE | NO_LORA | {"seed": 0, "strength_1": True}, api_name="/generate"), "Strength must be"),
        (dict(kwargs=GENERATE | NO_LORA | {"seed": 0, "steps": [1]}, api_name="/generate"), "Steps must be a number"),
        (dict(kwargs=GENERATE | NO_LORA | {"seed": 2**32}, api_name="/generate"), "from 0 to 4294967295"),
        (dict(kwargs=GENERATE | NO_LORA | {"seed": -1}, api_name="/generate"), "Seed -1 is not allowed"),
    ],
)
def test_wrong_values_through_the_api_get_a_specific_error(api, call, expected):
    text = refused(api.predict, *call.get("args", ()), **call.get("kwargs", {}), api_name=call["api_name"])
    assert expected in text, text
    assert "Traceback" not in text and "upstream Gradio app has raised" not in text


FILE_DATA = {"meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize(
    "api_name, data, expected",
    [
        ("import_files", ["x", "notafile"], "must be an uploaded file"),
        ("import_files", ["x", [{"path": "/etc/passwd"} | FILE_DATA]], "'passwd' was not uploaded to this studio"),
        ("show_dataset", [], "show_dataset takes 1 values (Dataset), got 0"),
        ("save_captions", ["linked", {"data": "zz"}], "save_captions: an input could not be read"),
    ],
)
def test_malformed_raw_api_calls_get_a_specific_error(web, api_name, data, expected):
    """What no gradio_client sends but any HTTP client can: the error names the field or the action."""
    started = web.post(f"/gradio_api/call/{api_name}", json={"data": data})
    assert started.status_code == 200, started.text
    stream = web.get(f"/gradio_api/call/{api_name}/{started.json()['event_id']}").text
    assert "event: error" in stream and expected in stream, stream
    assert '"error": null' not in stream and "Traceback" not in stream


def test_a_long_lora_name_is_refused_before_a_job_is_queued(server, api):
    text = refused(api.predict, "linked", None, api_name="/start_job", **quick_form(export_name="x" * 300))
    assert "LoRA name" in text and "1-64 letters" in text, text
    jobs = api.predict(None, api_name="/show_job")[0]
    assert not any(row[1] == "x" * 300 for row in (jobs or {}).get("data") or [])
    text = refused(api.predict, "linked", None, api_name="/start_job", **quick_form(train_steps="many"))
    assert "Steps must be a number" in text, text


# the rules behind the guard, case by case (no server needed)


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1:7860", True),
        ("[::1]:7860", True),
        ("192.168.1.20:7860", True),  # an IP address cannot be rebound by DNS
        ("localhost:7860", True),
        ("LOCALHOST", True),
        ("studio-box", True),  # a name the machine has
        ("attacker.example", False),
        ("localhost.attacker.example:7860", False),
        ("", False),
    ],
)
def test_host_rule(host, ok):
    from app.security import host_allowed

    assert host_allowed(host, ["studio-box"]) is ok


@pytest.mark.parametrize(
    "origin, host, ok",
    [
        ("http://127.0.0.1:7860", "127.0.0.1:7860", True),
        ("http://localhost", "localhost:80", True),
        ("https://studio.example", "127.0.0.1:7860", True),  # --allowed-host studio.example (a proxy)
        ("http://127.0.0.1:8000", "127.0.0.1:7860", False),  # another app on this machine
        ("null", "127.0.0.1:7860", False),
        ("file://", "127.0.0.1:7860", False),
    ],
)
def test_origin_rule(origin, host, ok):
    from app.security import same_origin

    assert same_origin(origin, host, ["studio.example"]) is ok


def test_only_files_inside_the_upload_folder_are_forgotten(tmp_path):
    from app.uploads import forget_uploads

    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    taken = uploads / "abc" / "a.png"
    taken.write_bytes(b"x")
    elsewhere = tmp_path / "dataset.png"
    elsewhere.write_bytes(b"keep")
    (uploads / "link.png").symlink_to(elsewhere)
    assert forget_uploads(uploads, [str(taken), str(elsewhere), str(uploads / "link.png")]) == 1
    assert not (uploads / "abc").exists() and elsewhere.read_bytes() == b"keep"
