"""bench/gpu.py runs on a CPU at tiny size: every row has the figures the GPU run reports, and the checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "rows.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--json", str(out), *args],
                   env=env, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_the_gpu_bench_runs_both_loops_at_tiny_size_with_flops_and_images_per_second(tmp_path):
    report = _run(tmp_path, "--families", "sd15,sdxl", "--batches", "1", "--steps", "1", "--warmup", "1",
                  "--no-compile")
    rows = report["rows"]
    assert report["device"].startswith("cpu")
    assert {(r["family"], r["loop"], r["checkpointing"]) for r in rows} == {
        (f, loop, c) for f in ("sd15", "sdxl") for loop in ("example", "ours") for c in (False, True)}
    for row in rows:
        assert row["images_per_s"] > 0 and row["unet_train_tflop_per_image"] > 0
        assert row["mfu"] is None and row["peak_memory_bytes"] is None  # no peak or CUDA counter on a CPU
    # Both loops do the same UNet work per image; SDXL's tiny UNet is not the SD 1.x one.
    flops = {(r["family"], r["loop"]): r["unet_train_tflop_per_image"] for r in rows}
    assert flops["sd15", "ours"] == flops["sd15", "example"] != flops["sdxl", "ours"]


def test_the_gpu_checks_train_in_two_precisions_and_preview_on_the_device(tmp_path):
    rows = _run(tmp_path, "--checks")["rows"]
    assert [r["check"] for r in rows][:2] == ["train tiny, mixed_precision=no", "train tiny, mixed_precision=bf16"]
    assert all(r["ok"] for r in rows), rows
