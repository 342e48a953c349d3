"""`lora-studio healthcheck`: exit 0 when the web UI answers on this machine, 1 when it does not.

    lora-studio healthcheck                 # http://127.0.0.1:7860/ (or $LORA_STUDIO_PORT)
    lora-studio healthcheck --port 8000

The Docker image's HEALTHCHECK runs it. Any HTTP answer below 500 counts as healthy: with a login configured
the server answers the login page (or 401), which still proves it is up.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 7860


def register(subparsers) -> None:
    parser = subparsers.add_parser("healthcheck", help="exit 0 if the web UI answers on 127.0.0.1",
                                   description="Check that `lora-studio serve` answers HTTP on this machine.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LORA_STUDIO_PORT") or DEFAULT_PORT),
                        help=f"port of the web UI (default $LORA_STUDIO_PORT or {DEFAULT_PORT})")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    parser.set_defaults(handler=run)


def check(port: int, timeout: float = 5.0) -> tuple[bool, str]:
    """(healthy, what happened) for http://127.0.0.1:<port>/."""
    import urllib.error  # here, not at the top: urllib.request costs every other command a fifth of a second
    import urllib.request

    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fixed http URL)
            return True, f"{url} answered {response.status}"
    except urllib.error.HTTPError as err:
        return err.code < 500, f"{url} answered {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return False, f"{url} did not answer: {reason}"


def run(args: argparse.Namespace) -> int:
    healthy, message = check(args.port, args.timeout)
    print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1
