"""`lora-studio train` against diffusers' `train_text_to_image_lora.py`, as whole processes, as a user times them.

    python bench/vs_example.py --example ../diffusers/examples/text_to_image/train_text_to_image_lora.py
    python bench/vs_example.py --example SCRIPT --batches 2 --steps 40 --rounds 1      # quick

Both train the tiny SD 1.x model (written once as a diffusers folder by `lora-studio tiny-model`, which is what
the example loads) on the example dataset (copied once as the `imagefolder` layout the example reads: the
pictures and a `metadata.jsonl` of their captions) at 128 px, rank 4, for the same steps, each with its own
defaults otherwise (ours trains on one thread by default, `train.num_threads`; `--threads 0` gives it every
core). Each round runs ours and then the example at every batch size, so a change in the machine's load hits
both alike; the table gives the medians of the wall time of each whole process (start-up,
model loading, caching and saving included) and their ratio. Issue #20's target: ours / example <= 0.67 at
batch 2 and at the example's default batch (16).

The example is read from a diffusers checkout (it is not part of the diffusers wheel and is not copied into
this project); it needs torchvision and the `datasets` library, which LoRA Studio does not: run this bench in
an environment that has both (`--python` can name another interpreter for the example).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = ROOT / "datasets" / "example"
EXAMPLE_DEFAULT_BATCH = 16


def prepare(scratch: Path) -> tuple[Path, Path]:
    """The tiny model as a diffusers folder and the example dataset as an imagefolder with metadata.jsonl."""
    model = scratch / "tiny-sd"
    subprocess.run([sys.executable, "-m", "trainer.cli", "tiny-model", str(model)], check=True, cwd=ROOT,
                   env=_env(), capture_output=True)
    data = scratch / "imagefolder"
    data.mkdir()
    with open(data / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for image in sorted(EXAMPLE_DATA.glob("*.png")):
            shutil.copyfile(image, data / image.name)
            caption = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
            meta.write(json.dumps({"file_name": image.name, "text": caption}) + "\n")
    return model, data


def ours(model: Path, batch: int, steps: int, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "train", "--config", str(config), "--base-model", str(model),
            "--data", str(EXAMPLE_DATA), "--resolution", "128", "--rank", "4", "--alpha", "4", "--batch-size",
            str(batch), "--steps", str(steps), "--output", str(out), "--name", "bench"]


def example(python: str, script: Path, model: Path, data: Path, batch: int, steps: int, out: Path) -> list[str]:
    return [python, str(script), "--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
            "--resolution", "128", "--rank", "4", "--train_batch_size", str(batch), "--max_train_steps", str(steps),
            "--output_dir", str(out), "--seed", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)  # each process picks its threads as a user's would
    return env


def timed(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "wb") as handle:
        result = subprocess.run(cmd, env=_env(), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=7200)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{cmd[1]} failed ({result.returncode}); its output: {log}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", required=True, type=Path,
                        help="examples/text_to_image/train_text_to_image_lora.py of a diffusers checkout")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the example")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, EXAMPLE_DEFAULT_BATCH])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="ours: train.num_threads (default: ours as installed, 1; 0: every core, as the "
                             "example's torch takes)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        model, data = prepare(scratch)
        config = scratch / "threads.toml"
        config.write_text("" if args.threads is None else f"[train]\nnum_threads = {args.threads}\n",
                          encoding="utf-8")
        for index in range(args.rounds):
            for batch in args.batches:
                for who in ("ours", "example"):
                    out = scratch / f"{who}-{batch}-{index}"
                    cmd = (ours(model, batch, args.steps, out, config) if who == "ours"
                           else example(args.python, args.example, model, data, batch, args.steps, out))
                    seconds = timed(cmd, scratch / f"{who}-{batch}-{index}.log")
                    times.setdefault(f"{who} {batch}", []).append(seconds)
                    print(f"round {index + 1} batch {batch} {who}: {seconds:.1f} s", flush=True)
    result = {"steps": args.steps, "rounds": args.rounds, "times": times, "ratio": {}}
    print(f"\n{args.steps} steps, 128 px, rank 4, {args.rounds} rounds (medians of whole processes)")
    print("| batch | ours | example | ours / example |")
    print("|---|---|---|---|")
    for batch in args.batches:
        mine, theirs = statistics.median(times[f"ours {batch}"]), statistics.median(times[f"example {batch}"])
        result["ratio"][str(batch)] = mine / theirs
        print(f"| {batch} | {mine:.1f} s | {theirs:.1f} s | {mine / theirs:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
