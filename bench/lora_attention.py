"""The fused LoRA attention processor (trainer/lora_attention.py) against peft's layers, one process.

    PYTHONPATH=. python bench/lora_attention.py                  # batch 2 and 12 at 128 px, 8 rounds
    PYTHONPATH=. python bench/lora_attention.py --batches 2 --rounds 2     # quick

The tiny SD 1.x UNet with rank-4 LoRA on to_q/to_k/to_v/to_out.0, random latents and text, fused AdamW, one
thread (as `lora-studio train` runs by default). Three forms of the same step, in turn in every round so the
machine's drift hits each alike: `peft` (peft's layers under diffusers' processor, as before), `fused` (the
processor with the LoRA kept apart, base + B(A(x)): what wider layers get) and `folded` (the processor as the
tiny models get it, W + s B A folded into the weight each step). Reports each form's median step and its
ratio to `peft`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import lora_attention  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.models import load_base  # noqa: E402
from trainer.network import add_lora, trainable_parameters  # noqa: E402

FORMS = ("peft", "fused", "folded")


def build():
    config = TrainConfig()
    config.network.rank = config.network.alpha = 4
    base = load_base(config.model)
    add_lora(base, config.network, 100)
    params = [p for group in trainable_parameters(base, config.network).values() for p in group]
    unet = base.pipe.unet.train()
    peft_processors = unet.attn_processors
    lora_attention.install_fused_attention(unet)
    return unet, params, peft_processors, torch.optim.AdamW(params, lr=1e-4, fused=True)


def step(unet, optimizer, latents: torch.Tensor, text: torch.Tensor) -> None:
    timesteps = torch.randint(0, 1000, (latents.shape[0],))
    loss = (unet(latents, timesteps, encoder_hidden_states=text).sample - latents).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def use(unet, form: str, peft_processors, fused_processors) -> None:
    unet.set_attn_processor(dict(peft_processors if form == "peft" else fused_processors))
    lora_attention.FOLD_MAX_WEIGHT = 128 * 128 if form == "folded" else 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 12])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per form and round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    unet, params, peft_processors, optimizer = build()
    fused_processors = unet.attn_processors
    results = {}
    for batch in args.batches:
        latents = torch.randn(batch, 4, 16, 16)
        text = torch.randn(batch, 77, unet.config.cross_attention_dim)

        times: dict[str, list[float]] = {form: [] for form in FORMS}
        for _ in range(args.rounds):
            for form in FORMS:
                use(unet, form, peft_processors, fused_processors)
                step(unet, optimizer, latents, text)  # the first after a switch rebuilds the concatenated weights
                for _ in range(args.steps):
                    started = time.perf_counter()
                    step(unet, optimizer, latents, text)
                    times[form].append(time.perf_counter() - started)
        medians = {form: statistics.median(values) * 1000 for form, values in times.items()}
        results[batch] = medians
        print(f"batch {batch} at 128 px, one thread, {args.rounds} rounds x {args.steps} steps:")
        for form in FORMS:
            print(f"  {form:7s} {medians[form]:7.1f} ms a step   / peft {medians[form] / medians['peft']:.2f}")
    return results


if __name__ == "__main__":
    main()
