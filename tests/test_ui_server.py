"""A real `lora-studio serve` on 127.0.0.1: what it serves, what uploads it takes, and its login."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from uiserver import http_status, running_server


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
    (server.home / "studio.sqlite").write_bytes(b"SQLite format 3\x00")
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
    assert "Imported 1 images" in second[0], second[0]
    folder = server.home / "datasets" / "zipped"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt", "b.png", "b.txt", "c.png", "c.txt"]
    assert (folder / "c.txt").read_text() == "a red c"
    assert len(second[2]) == 3  # the gallery shows all three images
    assert not list((server.home / ".gradio").glob("import-*"))  # the scratch folder is gone
