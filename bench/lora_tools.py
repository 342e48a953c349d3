"""merge / resize / extract and fused previews on the tiny model, in one process.

    PYTHONPATH=. python bench/lora_tools.py [--repeats 5] [--steps 20] [--train-steps 60]

Prints:
  1. a preview with two LoRAs fused into the base weights (`pool.generate(fuse=True)`) ÷ the same preview with
     them as LoRA layers, and ÷ the base alone; and what one fuse (after a change of mix) costs;
  2. the share of a trained rank-16 LoRA's update that `resize` keeps at ranks 8, 4, 2 and 1;
  3. how long merge, resize and extract take on the tiny model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from adapters import paired  # noqa: E402
from pool_loras import write_lora  # noqa: E402

from trainer.generate import AdapterPool  # noqa: E402
from trainer.models.tiny import build_tiny_pipeline  # noqa: E402


def fused_speed(folder: Path, repeats: int, steps: int) -> list[str]:
    pipe = build_tiny_pipeline("sd15")
    pool = AdapterPool("tiny")
    for name, seed, rank in (("a", 1, 4), ("b", 2, 8)):
        pool.load(name, write_lora(pipe, folder / f"{name}.safetensors", seed=seed, rank=rank, fmt="kohya",
                                   text_encoder=True))
    mix = {"a": 0.7, "b": 0.4}
    options = dict(seed=1, steps=steps, width=128, height=128)

    def run(strengths, fuse):
        return lambda: pool.generate("a lighthouse", strengths=strengths, fuse=fuse, **options)

    run(mix, True)()  # the first fuse happens here: the timed fused runs reuse it
    fused, unfused, ratio = paired(run(mix, True), run(mix, False), repeats)
    fused_again, base, ratio_base = paired(run(mix, True), run({}, False), repeats)
    fuse_costs = []
    for _ in range(repeats):
        pool.generate("x", strengths={}, steps=1, width=64, height=64, output_type="latent")
        start = time.perf_counter()
        pool.generate("x", strengths=mix, fuse=True, steps=1, width=64, height=64, output_type="latent")
        fuse_costs.append(time.perf_counter() - start)
    return [f"| fused preview ÷ unfused (two LoRAs, {steps} steps, 128 px, CFG) | {ratio:.2f} "
            f"({fused:.2f} s / {unfused:.2f} s) |",
            f"| fused preview ÷ base alone | {ratio_base:.2f} ({fused_again:.2f} s / {base:.2f} s) |",
            f"| one fuse + 1-step 64 px preview after a change of mix | {statistics.median(fuse_costs):.3f} s |"]


def trained_lora(folder: Path, steps: int) -> Path:
    from trainer.config import load_config
    from trainer.loop import train

    root = Path(__file__).resolve().parents[1]
    config = load_config(None, {"data.path": str(root / "datasets" / "example"), "data.resolution": 64,
                                "train.steps": steps, "network.rank": 16, "network.alpha": 16,
                                "export.output_dir": str(folder / "run"), "export.dtype": "float32",
                                "optim.learning_rate": 1e-3})
    train(config)
    return folder / "run" / f"{config.export.name}.safetensors"


def tools(folder: Path, lora: Path) -> list[str]:
    from trainer.lora_tools.extract import extract_lora
    from trainer.lora_tools.merge import merge_loras
    from trainer.lora_tools.resize import resize_lora

    rows = []
    for rank in (8, 4, 2, 1):
        start = time.perf_counter()
        report = resize_lora(lora, rank, folder / f"r{rank}.safetensors")
        low = min(report.layers.values())
        rows.append(f"| resize rank 16 -> {rank}: update kept (overall; lowest layer) | {report.overall:.1%}; "
                    f"{low:.1%} ({time.perf_counter() - start:.2f} s) |")
    start = time.perf_counter()
    merge_loras("tiny", [(lora, 1.0)], folder / "merged.safetensors")
    rows.append(f"| merge one LoRA into tiny, single file | {time.perf_counter() - start:.2f} s |")
    start = time.perf_counter()
    report = extract_lora(str(folder / "merged.safetensors"), "tiny", 16, folder / "extracted.safetensors")
    rows.append(f"| extract rank 16 from (tiny + that LoRA) vs tiny: kept | {report.overall:.2%} "
                f"({time.perf_counter() - start:.2f} s) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        rows = fused_speed(folder, args.repeats, args.steps)
        rows += tools(folder, trained_lora(folder, args.train_steps))
    print("| measurement | result |\n|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
