"""How fast the adapter pool switches LoRAs and strengths, against reloading, in one process.

    PYTHONPATH=. python bench/adapters.py [--repeats 5] [--out bench/results/adapters.md]

Prints three ratios on the embedded tiny model (CPU unless a GPU is there):
  1. a LoRA swap ÷ reloading the base pipeline from disk and loading the LoRA (what tools without a pool do);
     measured for a switch between two loaded LoRAs and for a hot-swap of a new file into the compiled slot;
  2. a strength change ÷ one denoising step (one UNet call, with classifier-free guidance);
  3. a generation with an unfused LoRA ÷ the same generation on the base alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pool_loras import write_lora  # noqa: E402

from trainer.generate import AdapterPool  # noqa: E402
from trainer.models.tiny import build_tiny_pipeline, save_tiny_model  # noqa: E402


def median_time(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(first, second, repeats: int) -> tuple[float, float, float]:
    """Median times of two actions run alternately, and the median of their per-pair ratios.

    Alternating keeps a ratio honest on a shared machine whose load drifts during the run."""
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(median_time(first, 1))
        times_b.append(median_time(second, 1))
    ratio = statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))
    return statistics.median(times_a), statistics.median(times_b), ratio


def reload_and_load(folder: Path, lora: Path) -> None:
    """The baseline: what a tool without a pool does for every change of LoRA."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="lora")


def measure(work: Path, repeats: int, steps: int) -> list[tuple[str, float, float | None]]:
    pipe = build_tiny_pipeline("sd15")
    folder = save_tiny_model("sd15", work / "tiny")
    files = [write_lora(pipe, work / f"lora{i}.safetensors", seed=i, fmt="kohya", rank=8) for i in range(3)]

    pool = AdapterPool("tiny")
    pool.load("a", files[0])
    pool.load("b", files[1])
    flip = iter(["b", "a"] * 1000)
    switch, reload, switch_ratio = paired(lambda: pool.set_strengths({next(flip): 1.0}),
                                          lambda: reload_and_load(folder, files[0]), repeats)

    slot_pool = AdapterPool("tiny", compile=True)  # never generates here, so it never compiles
    slot_pool.load("a", files[0])
    slot_pool.load("b", files[2])
    turns = iter(["b", "a"] * 1000)
    swap, _, swap_ratio = paired(lambda: slot_pool.set_strengths({next(turns): 1.0}),
                                 lambda: reload_and_load(folder, files[0]), repeats)
    load_new = median_time(lambda: pool.load("c", files[2]), repeats)
    load_slot = median_time(lambda: slot_pool.load("c", files[1]), repeats)

    unet = pool.pipe.unet
    latents = torch.randn(2, 4, unet.config.sample_size, unet.config.sample_size)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)

    def denoise() -> None:
        with torch.no_grad():
            unet(latents, torch.tensor(500), encoder_hidden_states=text)

    weights = iter([0.3, 0.6, 0.9] * 1000)
    pool.set_strengths({"a": 1.0})
    strength, step, strength_ratio = paired(lambda: pool.set_strengths({"a": next(weights)}), denoise, repeats)

    def render(strengths):
        return lambda: pool.generate("a lighthouse", seed=1, steps=steps, strengths=strengths)

    lora_gen, base_gen, gen_ratio = paired(render({"a": 1.0}), render({}), repeats)
    return [
        ("reload base from disk + load LoRA (the baseline)", reload, None),
        ("switch between two loaded LoRAs (set_adapters)", switch, switch_ratio),
        ("hot-swap the other loaded LoRA into the compiled slot (copy in place)", swap, swap_ratio),
        ("load a new LoRA file into the pool (read, check, inject)", load_new, None),
        ("load a new LoRA file into the compiled pool (read, check, diffusers hot-swap once, keep)",
         load_slot, None),
        ("strength change (peft set_scale on the adapter's layers)", strength, strength_ratio),
        ("one denoising step (UNet, batch 2 for CFG, 128 px)", step, None),
        (f"generation with an unfused LoRA at 1.0 ({steps} steps, 128 px)", lora_gen, gen_ratio),
        ("generation, base alone", base_gen, None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of the generation comparison")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine two spinning OpenMP threads can be 10x "
                             "slower than one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):  # the baseline's reloads print bars and notices
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    disable_progress_bars()
    rows = measure(Path(tempfile.mkdtemp(prefix="bench-adapters-")), args.repeats, args.steps)
    lines = [f"Tiny SD 1.x model, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"median of {args.repeats} runs.", "", "| measurement | time | ratio |", "|---|---|---|"]
    for label, seconds, ratio in rows:
        lines.append(f"| {label} | {seconds * 1000:.2f} ms | {'' if ratio is None else f'{ratio:.4f}'} |")
    lines += ["", "Ratios (medians over alternating pairs): a swap ÷ (reload + load) on the switch and hot-swap "
              "rows (target ≤ 0.05); a strength change ÷ one denoising step; a LoRA generation ÷ the base one."]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
