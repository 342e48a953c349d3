"""Security rules of the web server: who may connect, which names and paths are accepted, upload counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import security
from app.security import SecurityError

ROOT = Path(__file__).resolve().parents[1]


def test_loopback_needs_no_login_but_the_network_does():
    security.check_bind("127.0.0.1", [])
    security.check_bind("localhost", [])
    security.check_bind("::1", [])
    with pytest.raises(SecurityError) as err:
        security.check_bind("0.0.0.0", [])
    assert "--auth" in str(err.value) and "LORA_STUDIO_AUTH" in str(err.value)
    security.check_bind("0.0.0.0", [("me", "pw")])
    security.check_bind("0.0.0.0", [], insecure_no_auth=True)


def test_logins_come_from_flag_file_and_environment(tmp_path):
    auth_file = tmp_path / "logins"
    auth_file.write_text("# team\nann:pa:ss\n\nbob:secret\n")
    pairs = security.resolve_auth("me:pw", str(auth_file), "env:x")
    assert pairs == [("me", "pw"), ("ann", "pa:ss"), ("bob", "secret"), ("env", "x")]
    with pytest.raises(SecurityError, match="USER:PASSWORD"):
        security.resolve_auth("nopassword", None, None)
    with pytest.raises(SecurityError, match="does not exist"):
        security.resolve_auth(None, str(tmp_path / "missing"), None)


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "../x",
        "a/../../b",
        "/etc/passwd",
        "C:\\win",
        ".env",
        "-rf",
        "a b",
        "",
        "x;rm -rf /",
        "$(id)",
        "é",
    ],
)
def test_unsafe_names_are_refused(bad):
    with pytest.raises(SecurityError):
        security.safe_name(bad)


def test_suggested_names_are_safe():
    for text in ["My Cats (2024)!", "../../etc", "...", "日本", "a..b"]:
        assert security.safe_name(security.suggest_name(text)) == security.suggest_name(text)


def test_inside_refuses_paths_and_links_that_leave_the_root(tmp_path):
    root = tmp_path / "home"
    (root / "datasets" / "cats").mkdir(parents=True)
    assert security.inside(root, "datasets", "cats") == (root / "datasets" / "cats").resolve()
    with pytest.raises(SecurityError):
        security.inside(root, "..", "secret")
    with pytest.raises(SecurityError):
        security.inside(root, "/etc/passwd")
    (root / "datasets" / "link").symlink_to("/etc")
    with pytest.raises(SecurityError):
        security.inside(root, "datasets", "link", "passwd")


def test_upload_count_is_limited():
    assert security.check_upload_count(["a"] * 3, limit=3) == ["a"] * 3
    with pytest.raises(SecurityError, match="at most 3"):
        security.check_upload_count(["a"] * 4, limit=3)


def _serve(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LORA_STUDIO_AUTH"} | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", "serve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def test_serve_on_all_interfaces_without_a_login_is_refused(tmp_path):
    result = _serve("--host", "0.0.0.0", "--port", "9", "--home", str(tmp_path))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "--auth" in message and "LORA_STUDIO_AUTH" in message and "--insecure-no-auth" in message
    assert "Traceback" not in message
    assert not (tmp_path / "datasets").exists()  # refused before anything started
