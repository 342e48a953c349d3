"""Start a real `lora-studio serve` process on 127.0.0.1 and a free port, for the UI tests.

with running_server(home) as server:
    urllib.request.urlopen(server.url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class Server:
    url: str
    home: Path
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LORA_STUDIO_AUTH"}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra or {})
    return env


def start_server(
    home: Path,
    *args: str,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    timeout_s: float = 90,
    port: int | None = None,
) -> Server:
    """`port`: the same one as a stopped server's, for a page that reconnects (default: a free one)."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "trainer.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--home",
        str(home),
        *args,
    ]
    handle = open(log, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=serve_env(env), cwd=ROOT)
    server = Server(f"http://127.0.0.1:{port}", home, proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{server.output()}")
        try:
            urllib.request.urlopen(server.url + "/gradio_api/info", timeout=2)  # noqa: S310 - our own server
            return server
        except urllib.error.HTTPError:
            return server  # it answers (e.g. 401 behind a login): it is up
        except OSError:
            time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"serve did not answer within {timeout_s}s:\n{server.output()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextlib.contextmanager
def running_server(home: Path, *args: str, **kwargs) -> Iterator[Server]:
    server = start_server(home, *args, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)


def http_status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a real HTTP request (errors are returned, not raised)."""
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310 - test URLs
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
