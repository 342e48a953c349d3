"""Does `torch.compile` repay itself on a CPU training run? The tiny UNet's LoRA step, eager and compiled.

    PYTHONPATH=. python bench/compile_cost.py                 # eager, then compiled with a cold and a warm cache
    PYTHONPATH=. python bench/compile_cost.py --steps 5 --skip-compile      # quick: eager only

Each case runs in a fresh process on one thread (as `lora-studio train` runs by default): the tiny SD 1.x
UNet with rank-4 LoRA on to_q/to_k/to_v/to_out.0, batch 2 at 128 px (a 16 x 16 latent), random latents
and text, AdamW. The first step (which compiles) and the median of the following steps are reported. The
compiled cases share one inductor cache folder, made empty for the first: the cold case compiles from
scratch, the warm one finds every kernel in the persistent cache (a second run of the same shapes). From
them, the steps a run needs before compiling pays: first-step cost over the time saved per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from trainer.config import TrainConfig
from trainer.models import load_base
from trainer.network import add_lora, trainable_parameters
config = TrainConfig()
config.network.rank = config.network.alpha = 4
base = load_base(config.model)
add_lora(base, config.network, 100)
params = [p for group in trainable_parameters(base, config.network).values() for p in group]
unet = base.pipe.unet.train()
optimizer = torch.optim.AdamW(params, lr=1e-4)
text = torch.randn(2, 77, unet.config.cross_attention_dim)
latents = torch.randn(2, 4, 16, 16)
forward = torch.compile(unet) if sys.argv[1] == "compile" else unet
def step():
    t = torch.randint(0, 1000, (2,))
    loss = (forward(latents, t, encoder_hidden_states=text).sample - latents).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
started = time.perf_counter()
step()
first = time.perf_counter() - started
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
print("RESULT " + json.dumps({"first_s": first, "step_s": sorted(times)[len(times) // 2]}))
"""


def run_case(mode: str, steps: int, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(steps)], env=env, capture_output=True, text=True,
                          timeout=3600, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the {mode} case failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the first")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        cases = {"eager": run_case("eager", args.steps, cache)}
        if not args.skip_compile:
            cases["compiled, cold cache"] = run_case("compile", args.steps, cache)
            cases["compiled, warm cache"] = run_case("compile", args.steps, cache)
    eager = cases["eager"]["step_s"]
    print("| case | first step | median step | steps before compiling pays |")
    print("|---|---|---|---|")
    for name, case in cases.items():
        saved = eager - case["step_s"]
        pays = "–" if name == "eager" else (f"{(case['first_s'] - cases['eager']['first_s']) / saved:.0f}"
                                            if saved > 0 else "never")
        print(f"| {name} | {case['first_s']:.1f} s | {case['step_s'] * 1000:.1f} ms | {pays} |")
    return cases


if __name__ == "__main__":
    main()
