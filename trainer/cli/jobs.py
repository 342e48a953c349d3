"""`lora-studio jobs ...`: submit, watch and command training jobs from a terminal or a script.

    lora-studio jobs submit run.toml --json        # {"id": "a1b2c3d4"}
    lora-studio jobs list
    lora-studio jobs show a1b2c3d4 --json
    lora-studio jobs logs a1b2c3d4 --follow
    lora-studio jobs stop a1b2c3d4 [--force]
    lora-studio jobs resume a1b2c3d4
    lora-studio jobs resume a1b2c3d4 --with-suggested   # out of memory: with the settings its failure named
    lora-studio jobs rm a1b2c3d4

Every command takes `--home` (default: LORA_STUDIO_HOME, else ~/.lora-studio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used, so `lora-studio --help` does not load the job store
    from trainer.jobs import Supervisor


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `jobs` command and its subcommands to the `lora-studio` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=None,
                        help="LoRA Studio home folder (default: $LORA_STUDIO_HOME, else ~/.lora-studio)")
    common.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="run at most N jobs at once from now on (saved in the home; default 1)")
    scripted = argparse.ArgumentParser(add_help=False)
    scripted.add_argument("--json", action="store_true", help="print JSON for scripts")

    jobs = subparsers.add_parser("jobs", help="queue, watch, stop and resume training jobs",
                                 description=__doc__.splitlines()[0])
    sub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)

    p = sub.add_parser("submit", parents=[common, scripted], help="queue a training job from a config file")
    p.add_argument("config", type=Path, help="the TOML config (as written by the UI or `lora-studio config`)")
    p.add_argument("--request-key", default=None,
                   help="an idempotency key: submitting twice with the same key makes one job")
    p.add_argument("--wait", action="store_true", help="wait until the job has finished")
    p.add_argument("--num-processes", type=int, metavar="N", help="train on N processes (GPUs) through accelerate")
    p.add_argument("--gpus", metavar="IDS", help="GPU ids to train on, like 0,1 (one process each)")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("list", parents=[common, scripted], help="list jobs, oldest first")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", parents=[common, scripted], help="one job's status, progress and outputs")
    p.add_argument("id")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("logs", parents=[common], help="print a job's log")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--lines", "-n", type=int, default=0, help="only the last N lines (default: all)")
    p.add_argument("--events", action="store_true", help="print events.jsonl instead of the log")
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("stop", parents=[common, scripted],
                       help="stop a job: it saves a checkpoint and ends stopped (--force: kill it now)")
    p.add_argument("id")
    p.add_argument("--force", action="store_true", help="kill the runner now; resume uses the last save")
    p.add_argument("--wait", action="store_true", help="wait until the job has ended")
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("resume", parents=[common, scripted],
                       help="queue a stopped, interrupted or failed job again from its newest checkpoint")
    p.add_argument("id")
    p.add_argument("--with-suggested", action="store_true",
                   help="a job that ran out of memory: first apply the memory settings its failure suggested "
                        "(`jobs show` lists them under suggested)")
    p.add_argument("--wait", action="store_true", help="wait until the job has finished")
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("rm", parents=[common], help="delete a job that is not running, with its folder")
    p.add_argument("id")
    p.set_defaults(handler=cmd_rm)


def supervisor(args: argparse.Namespace) -> Supervisor:
    from trainer.jobs import Supervisor

    sup = Supervisor(args.home)
    if args.max_concurrent is not None:
        sup.save_max_concurrent(args.max_concurrent)
        sup.pump()
    return sup


def cmd_submit(args: argparse.Namespace) -> int:
    overrides = {}
    if args.num_processes is not None:
        overrides["train.num_processes"] = args.num_processes
    if args.gpus:
        overrides["train.gpus"] = args.gpus
        overrides["train.num_processes"] = len([g for g in args.gpus.split(",") if g.strip()])
    from trainer.config import load_config

    config = load_config(args.config, overrides)
    sup = supervisor(args)
    job_id = sup.submit(config, request_key=args.request_key)
    job = sup.wait(job_id) if args.wait else sup.show(job_id)
    if args.json:
        print(json.dumps(job if args.wait else {"id": job_id, "status": job["status"]}))
    else:
        print(job_id)
    return _exit_code(job) if args.wait else 0


def cmd_list(args: argparse.Namespace) -> int:
    sup = supervisor(args)
    jobs = sup.list()
    if sup.upkeep_error:  # a full disk: the list is read as it is, nothing could be updated
        print(f"warning: {sup.upkeep_error}", file=sys.stderr)
    if args.json:
        print(json.dumps(jobs))
        return 0
    if not jobs:
        print("no jobs yet: `lora-studio jobs submit CONFIG.toml` queues one")
        return 0
    print(f"{'ID':<10}{'STATUS':<13}{'STEP':>11}  {'LOSS':>8}  {'ETA':>7}  {'CREATED':<17}NAME")
    for job in jobs:
        step = f"{job['step']}/{job['total_steps']}"
        loss = f"{job['loss']:.4f}" if isinstance(job["loss"], (int, float)) else "-"
        eta = f"{job['eta_s']:.0f}s" if job["status"] == "running" and job["eta_s"] is not None else "-"
        status = job["status"] + ("*" if job["stopping"] else "")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created"]))
        print(f"{job['id']:<10}{status:<13}{step:>11}  {loss:>8}  {eta:>7}  {created:<17}{job['name']}")
    if any(job["stopping"] for job in jobs):
        print("* stopping: saving a checkpoint")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = supervisor(args).show(args.id)
    if args.json:
        print(json.dumps(job))
        return 0
    for key, value in job.items():
        if key in ("created", "updated"):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        elif isinstance(value, list):
            value = "\n    ".join(["", *map(str, value)]) if value else "-"
        print(f"{key:>16}: {'-' if value is None else value}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sup = supervisor(args)
    job = sup.show(args.id)
    path = sup.files(args.id).events if args.events else sup.files(args.id).log
    offset = 0
    if args.lines > 0 and not args.follow:
        print(sup.log_tail(args.id, args.lines) if not args.events else _tail(path, args.lines))
        return 0
    while True:
        offset = _print_from(path, offset)
        if not args.follow or job["status"] not in ("queued", "running"):
            return 0
        time.sleep(0.5)
        sup.reconcile()
        job = sup.show(args.id)
        if job["status"] not in ("queued", "running"):
            _print_from(path, offset)
            return 0


def cmd_stop(args: argparse.Namespace) -> int:
    sup = supervisor(args)
    job = sup.stop(args.id, force=args.force)
    if args.wait:
        job = sup.wait(args.id)
    if args.json:
        print(json.dumps(job))
    elif job["status"] == "running":
        print(f"{args.id}: stopping; it saves a checkpoint and ends stopped (`jobs show {args.id}`)")
    else:
        print(f"{args.id}: {job['status']}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from trainer.errors import JobError

    sup = supervisor(args)
    settings = None
    if args.with_suggested:
        settings = sup.show(args.id)["suggested"]
        if not settings:
            raise JobError("has no suggested settings (it did not fail out of memory, or no setting a resume "
                           "may change fits)", where=f"job {args.id}",
                           fix=f"Resume without --with-suggested, or read `lora-studio jobs show {args.id}`.")
    job_id = sup.resume(args.id, settings=settings)
    job = sup.wait(job_id) if args.wait else sup.show(job_id)
    if args.json:
        print(json.dumps(job if args.wait else {"id": job_id, "status": job["status"], "settings": settings}))
    else:
        changed = "".join(f"\n  {key} = {json.dumps(value)}" for key, value in (settings or {}).items())
        print(f"{job_id}: {job['status']}" + (f", resumed with:{changed}" if changed else ""))
    return _exit_code(job) if args.wait else 0


def cmd_rm(args: argparse.Namespace) -> int:
    supervisor(args).remove(args.id)
    print(f"{args.id}: removed")
    return 0


def _exit_code(job: dict[str, Any]) -> int:
    if job["status"] == "failed":
        print(f"job {job['id']} failed: {job['error']}\n{job['advice'] or ''}".rstrip(), file=sys.stderr)
    return 0 if job["status"] == "done" else 1


def _print_from(path: Path, offset: int) -> int:
    """Print a file from `offset` up to its last complete line; returns the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset
    complete = data[: data.rfind(b"\n") + 1]
    if complete:
        sys.stdout.write(complete.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(complete)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

