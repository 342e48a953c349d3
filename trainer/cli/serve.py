"""`lora-studio serve`: start the web UI (Datasets, Train, Generate) on 127.0.0.1:7860.

    lora-studio serve                                   # http://127.0.0.1:7860, state in ~/.lora-studio
    lora-studio serve --host 0.0.0.0 --auth me:secret   # reachable from the network: a login is required

The bind/auth check runs before gradio is imported, so a refused start is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_home() -> Path:
    """`LORA_STUDIO_HOME`, else `~/.lora-studio` (the same rule as the job store)."""
    return Path(os.environ.get("LORA_STUDIO_HOME") or Path.home() / ".lora-studio").expanduser()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="start the web UI", description="Start the LoRA Studio web UI (Gradio)."
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 needs a login)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--home",
        default=None,
        help="folder for datasets, jobs and LoRAs (default: $LORA_STUDIO_HOME or ~/.lora-studio)",
    )
    p.add_argument(
        "--base-model",
        default="tiny",
        help="base model for new jobs and previews (default: the embedded 'tiny' model)",
    )
    p.add_argument(
        "--auth", default=None, metavar="USER:PASSWORD", help="require this login (comma-separate several)"
    )
    p.add_argument("--auth-file", default=None, metavar="FILE", help="file with one USER:PASSWORD a line")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-local --host without a login (only on a network you trust)",
    )
    p.add_argument(
        "--max-upload-mb", type=int, default=None, help="largest single upload in MB (default 200)"
    )
    p.add_argument(
        "--max-upload-files", type=int, default=None, help="most files in one upload (default 1000)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name browsers may use to reach the studio besides its IP addresses, localhost and this "
        "machine's name (e.g. a reverse proxy's); repeat for several, or list them comma-separated in "
        "LORA_STUDIO_ALLOWED_HOSTS. Requests naming any other host are refused",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from app.security import check_bind, resolve_auth

    auth = resolve_auth(args.auth, args.auth_file, os.environ.get("LORA_STUDIO_AUTH"))
    check_bind(args.host, auth, insecure_no_auth=args.insecure_no_auth)
    if not 0 < args.port < 65536:
        print(f"--port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2

    home = (Path(args.home).expanduser() if args.home else default_home()).resolve()
    # before gradio is imported: its uploads and caches stay under <home>, not in a shared /tmp
    os.environ.setdefault("GRADIO_TEMP_DIR", str(home / ".gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.main import launch
    from app.studio import Studio

    limits = {"max_upload_mb": args.max_upload_mb, "max_upload_files": args.max_upload_files}
    studio = Studio(home=home, base_model=args.base_model, **{k: v for k, v in limits.items() if v})
    print(f"LoRA Studio: state in {studio.home}; open http://{args.host}:{args.port}", flush=True)
    env_hosts = os.environ.get("LORA_STUDIO_ALLOWED_HOSTS", "")
    hosts = args.allowed_host + [h.strip() for h in env_hosts.split(",") if h.strip()]
    launch(studio, host=args.host, port=args.port, auth=auth, allowed_hosts=hosts)
    return 0
