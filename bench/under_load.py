"""Training under load: a whole `lora-studio train` process timed quiet, beside a busy core, and beside a preview.

    PYTHONPATH=. python bench/under_load.py                 # 3 rounds of 80 steps
    PYTHONPATH=. python bench/under_load.py --steps 20 --rounds 1   # quick

Each round runs the same training (tiny model, the example dataset, `train.num_threads` at its default of 1)
once per case, in turn, so a change in the machine's load hits every case alike:
- `quiet`: nothing else runs;
- `hog`: one process spins on one core (`while True: pass`);
- `preview`: a process renders previews with the adapter pool in a loop on the threads the web UI gives a
  preview while a job trains (`Studio.preview_threads`: the usable cores less the job's);
- `preview-all-cores`: the same loop on every core (torch's default, and what the UI did before).
The table gives each case's median wall time and its ratio to `quiet`, and how many previews the loop drew.
Issue #20's targets: `hog` at most 2.5x quiet; a preview slows the job by no more than its share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOG = "while True: pass"
PREVIEWS = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from trainer.generate import AdapterPool
pool = AdapterPool("tiny", device="cpu")
print("ready", flush=True)
count = 0
while True:
    pool.generate("a red circle", seed=count, steps=8)
    count += 1
    print("image", count, flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_NUM_THREADS", None)  # each process picks its threads as a user's would
    return env


def start_load(case: str, preview_threads: int, cores: int) -> subprocess.Popen | None:
    if case == "quiet":
        return None
    if case == "hog":
        return subprocess.Popen([sys.executable, "-c", HOG])
    threads = preview_threads if case == "preview" else cores
    proc = subprocess.Popen([sys.executable, "-c", PREVIEWS, str(threads)], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    proc.stdout.readline()  # "ready": the pool is built, previews start now
    return proc


def stop_load(proc: subprocess.Popen | None) -> int:
    """Stop the load; the previews it drew (0 for the hog)."""
    if proc is None:
        return 0
    proc.kill()
    out = proc.communicate()[0] or ""
    return sum(1 for line in out.splitlines() if line.startswith("image"))


def train_once(steps: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "trainer.cli", "train", "--data", str(ROOT / "datasets" / "example"),
           "--steps", str(steps), "--output", str(out), "--name", "load"]
    started = time.perf_counter()
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["quiet", "hog", "preview", "preview-all-cores"])
    args = parser.parse_args(argv)
    from app.studio import usable_cores

    cores = usable_cores()
    preview_threads = max(1, cores - 1)  # Studio.preview_threads beside one job of train.num_threads = 1
    times: dict[str, list[float]] = {case: [] for case in args.cases}
    drawn: dict[str, int] = dict.fromkeys(args.cases, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            for case in args.cases:
                load = start_load(case, preview_threads, cores)
                try:
                    seconds = train_once(args.steps, Path(tmp) / f"{case}-{index}")
                finally:
                    drawn[case] += stop_load(load)
                times[case].append(seconds)
                print(f"round {index + 1} {case}: {seconds:.1f} s", flush=True)
    quiet = statistics.median(times["quiet"]) if "quiet" in times else None
    print(f"\n{args.steps} steps, {args.rounds} rounds, {cores} usable cores, previews on {preview_threads} thread(s)")
    print("| case | median wall | ÷ quiet | previews drawn |")
    print("|---|---|---|---|")
    for case, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / quiet:.2f}" if quiet else "–"
        print(f"| {case} | {median:.1f} s | {ratio} | {drawn[case]} |")


if __name__ == "__main__":
    main()
