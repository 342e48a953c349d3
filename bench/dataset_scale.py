"""How LoRA Studio scales with the dataset: the doctor's rate, time to the first step and peak memory, per size.

    PYTHONPATH=. python bench/dataset_scale.py                      # 250 and 1,000 pictures at 512 px
    PYTHONPATH=. python bench/dataset_scale.py --train-size 128      # 512 px pictures, trained at tiny's 128 px
    PYTHONPATH=. python bench/dataset_scale.py --train-size 128 --counts 1000 --trim-every 50   # heap trimmed
    PYTHONPATH=. python bench/dataset_scale.py --counts 20 40 --size 256 --json out.json   # quick

The pictures are the shapes vocabulary (trainer/models/shapes.py) scaled to `--size` px, with captions. Each
count runs in a fresh process (so its peak RSS is its own): import, `doctor` over the folder, then a 1-step
`train` on the tiny model at `--train-size` px (default: the pictures' size), timing the call to its first
step; the time before the first step is almost all VAE encoding (once per picture; `data.flip` is off).
The figure that matters is the growth: from the smaller to the larger dataset, peak memory should grow by
about the cache itself (the latent distributions, mean and std, float32, 4 x (size/8)^2 values each per
picture, and one 77 x 64 float32 text embedding per distinct caption), not by the pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
from trainer.config import load_config
from trainer.data.doctor import doctor
from trainer.loop import train
imported = time.perf_counter()
folder, size = sys.argv[1], int(sys.argv[2])
config = load_config(None, {"data.path": folder, "data.resolution": size, "train.steps": 1,
                            "train.log_with": "none", "export.output_dir": sys.argv[3],
                            "export.dtype": "float32", "sample.every_n_steps": 0})
before = time.perf_counter()
report = doctor(folder, config)
doctor_s = time.perf_counter() - before
rss_after_doctor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
marks, rss_at = {}, {}
def current_rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()
def on_event(event):
    kind = type(event).__name__
    if kind not in marks:
        marks[kind] = time.perf_counter()
        rss_at[kind] = current_rss()
import os
if os.environ.get("BENCH_TRIM_EVERY"):  # --trim-every: how much of the growth is glibc heap fragmentation
    import ctypes, trainer.examples as ex
    libc = ctypes.CDLL("libc.so.6"); every = int(os.environ["BENCH_TRIM_EVERY"]); count = [0]
    original = ex.ExampleSet._encode_latents
    def trimmed(self, example):
        count[0] += 1
        if count[0] % every == 0:
            libc.malloc_trim(0)
        return original(self, example)
    ex.ExampleSet._encode_latents = trimmed
call = time.perf_counter()
train(config, on_event=on_event)
print("RESULT " + json.dumps({
    "import_s": imported - started, "doctor_s": doctor_s, "doctor_items": len(report.items),
    "doctor_errors": len(report.errors),
    "to_started_s": marks.get("Started", call) - call, "to_first_step_s": marks.get("Progress", call) - call,
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_after_doctor": rss_after_doctor,
    "rss_at_started": rss_at.get("Started"), "rss_at_first_step": rss_at.get("Progress"),
}))
"""


def write_pictures(folder: Path, count: int, size: int) -> None:
    from trainer.models.shapes import make_pictures

    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, caption, _) in enumerate(make_pictures(1, count)):
        image.resize((size, size)).save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(caption + "\n", encoding="utf-8")


def run_one(folder: Path, size: int, out: Path, trim_every: int = 0) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if trim_every:
        env["BENCH_TRIM_EVERY"] = str(trim_every)
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(size), str(out)], env=env,
                          capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the run over {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def latent_bytes(count: int, size: int) -> int:
    return count * 2 * 4 * (size // 8) ** 2 * 4  # mean and std, 4 channels, float32


def caption_bytes(folder: Path) -> int:
    """The cached text conditioning: one (77, 64) float32 embedding per distinct caption (tiny SD 1.x)."""
    from trainer.models.tiny import _SD15_UNET

    captions = {path.read_text(encoding="utf-8").strip() for path in folder.glob("*.txt")}
    return len(captions) * 77 * _SD15_UNET["cross_attention_dim"] * 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--train-size", type=int, help="data.resolution of the run (default: --size)")
    parser.add_argument("--trim-every", type=int, default=0,
                        help="diagnostic: glibc malloc_trim(0) every N encoded pictures (Linux only)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    train_size = args.train_size or args.size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            folder = Path(tmp) / f"data-{count}"
            made = time.perf_counter()
            write_pictures(folder, count, args.size)
            row = {"count": count, "size": args.size, "train_size": train_size, "write_s": time.perf_counter() - made,
                   **run_one(folder, train_size, Path(tmp) / f"out-{count}", args.trim_every),
                   "latent_bytes": latent_bytes(count, train_size), "caption_bytes": caption_bytes(folder)}
            row["doctor_images_per_s"] = count / row["doctor_s"]
            rows.append(row)
            print(f"{count} pictures at {args.size} px, trained at {train_size}: doctor {row['doctor_s']:.1f} s "
                  f"({row['doctor_images_per_s']:.0f}/s), first step {row['to_first_step_s']:.1f} s after train() "
                  f"(started {row['to_started_s']:.1f} s), peak RSS {row['peak_rss'] / 2**20:.0f} MiB, "
                  f"cached latents {row['latent_bytes'] / 2**20:.0f} MiB, "
                  f"captions {row['caption_bytes'] / 2**20:.0f} MiB", flush=True)
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        grew = large["peak_rss"] - small["peak_rss"]
        latents = large["latent_bytes"] - small["latent_bytes"]
        cached = latents + large["caption_bytes"] - small["caption_bytes"]
        print(f"from {small['count']} to {large['count']} pictures: peak RSS grew {grew / 2**20:.0f} MiB, the "
              f"cached latents {latents / 2**20:.0f} MiB, latents and captions {cached / 2**20:.0f} MiB (ratio "
              f"{grew / cached:.2f}); time to the first step "
              f"x{large['to_first_step_s'] / small['to_first_step_s']:.2f} for x{large['count'] / small['count']:.0f}"
              " the pictures")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
