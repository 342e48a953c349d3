"""How fast the quick commands answer, as a user runs them: whole processes against `python -c pass`.

    PYTHONPATH=. python bench/cli_speed.py              # 5 rounds; add --generate for the preview breakdown

Each round runs `python -c pass` (the interpreter's own start-up, the baseline) and every quick command once,
in turn, so a change in the machine's load hits all of them alike; the table gives the median wall time and
CPU time (user + sys, which load inflates less) of each, their ratio to the baseline, and how many modules
the command imported with which heavy libraries among them. `--generate` times `lora-studio generate` on the
tiny model in phases: imports, building the pool, the first denoising step, and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "gradio")

# `lora-studio ARGS`, then which modules it imported (the same probe as tests/test_cli_imports.py).
PROBE = """
import json, runpy, sys
sys.argv = ["lora-studio", *sys.argv[1:]]
try:
    runpy.run_module("trainer.cli", run_name="__main__")
except SystemExit:
    pass
print("\\nPROBE " + json.dumps(sorted(sys.modules)))
"""

# `lora-studio generate` in phases; the first UNet call marks the first denoising step.
GENERATE = """
import sys, time, json
t0 = time.perf_counter()
from trainer.cli.generate import _pool_with
from trainer.generate import save_png
import torch
t1 = time.perf_counter()
pool, names = _pool_with("tiny", [])
t2 = time.perf_counter()
first = []
pool.pipe.unet.register_forward_pre_hook(lambda *a: first.append(time.perf_counter()) if not first else None)
images = pool.generate("a red circle", seed=0, steps=int(sys.argv[1]), strengths=names)
t3 = time.perf_counter()
save_png(images[0], sys.argv[2])
t4 = time.perf_counter()
print("PHASES " + json.dumps({"imports": t1 - t0, "pool": t2 - t1, "to_first_step": first[0] - t2,
                              "steps_and_decode": t3 - first[0], "save": t4 - t3, "total": t4 - t0}))
"""


def make_home(root: Path) -> tuple[Path, str]:
    """A LoRA Studio home with one finished job (queued through the real Supervisor; no runner starts)."""
    from trainer.config import TrainConfig
    from trainer.jobs import Supervisor

    sup = Supervisor(root / "home", max_concurrent=0)
    config = TrainConfig()
    config.data.path = str(ROOT / "datasets" / "example")
    config.train.steps = 3
    job_id = sup.submit(config)
    sup.store.update(job_id, status="done", step=3)
    return sup.home.root, job_id


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imported(args: list[str], env: dict) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    return json.loads(line[-1][len("PROBE "):]) if line else []


def bench_commands(runs: int, env: dict, job_id: str) -> list[dict]:
    commands = {"python -c pass": None, "lora-studio --help": ["--help"], "lora-studio jobs list": ["jobs", "list"],
                "lora-studio jobs show ID": ["jobs", "show", job_id],
                "lora-studio doctor datasets/example": ["doctor", "datasets/example"]}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, args in commands.items():  # alternate: every command once per round
            argv = [sys.executable, "-c", "pass"] if args is None else [sys.executable, "-m", "trainer.cli", *args]
            times[name].append(timed(argv, env))
    base_wall = statistics.median(w for w, _ in times["python -c pass"])
    base_cpu = statistics.median(c for _, c in times["python -c pass"])
    rows = []
    for name, args in commands.items():
        wall, cpu = statistics.median(w for w, _ in times[name]), statistics.median(c for _, c in times[name])
        modules = imported(args, env) if args is not None else []
        rows.append({"command": name, "wall_s": wall, "cpu_s": cpu, "wall_ratio": wall / base_wall,
                     "cpu_ratio": cpu / base_cpu if base_cpu else float("nan"), "modules": len(modules),
                     "heavy": sorted({m.split(".")[0] for m in modules} & set(HEAVY))})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds (median of this many runs per command)")
    parser.add_argument("--generate", action="store_true", help="also time `generate` on the tiny model in phases")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps for --generate (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, job_id = make_home(Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(ROOT), LORA_STUDIO_HOME=str(home),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        load = os.getloadavg()
        rows = bench_commands(args.runs, env, job_id)
        print(f"load average before: {load[0]:.2f} (1 min) on {os.cpu_count()} CPUs; "
              f"after: {os.getloadavg()[0]:.2f}; median of {args.runs} runs each")
        print("| command | wall s | ÷ python -c pass | CPU s | ÷ python -c pass | modules | heavy imported |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['command']}` | {r['wall_s']:.2f} | {r['wall_ratio']:.1f} | {r['cpu_s']:.2f} | "
                  f"{r['cpu_ratio']:.1f} | {r['modules'] or '-'} | {', '.join(r['heavy']) or 'none'} |")
        if args.generate:
            done = subprocess.run([sys.executable, "-c", GENERATE, str(args.steps), str(Path(tmp) / "out.png")],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("PHASES ")]
            if not line:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            phases = json.loads(line[-1][len("PHASES "):])
            print(f"\ngenerate --base-model tiny --steps {args.steps}: " +
                  ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
