"""Training speed: LoRA Studio's `train()` against a loop written like diffusers' `train_text_to_image_lora.py`.

    python bench/train_speed.py [--steps 60] [--resolution 128] [--batch-size 2]

Both run in this one process on the same tiny model, data, batch, resolution and step count, alternating
(baseline, ours, baseline, ours) so machine noise hits both alike. The baseline encodes every batch with the VAE
and the text encoder on every step, as the diffusers example does; ours caches both. Prints steps/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DDPMScheduler  # noqa: E402
from peft import LoraConfig  # noqa: E402

from trainer.config import load_config  # noqa: E402
from trainer.data import open_image, prepare_image, scan_dataset  # noqa: E402
from trainer.events import Progress  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.models.tiny import build_tiny_pipeline  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "datasets" / "example"


def baseline_steps_per_s(steps: int, resolution: int, batch_size: int, seed: int = 0) -> float:
    """The diffusers example's inner loop: VAE encode + text encoder + UNet on every step."""
    torch.manual_seed(seed)
    pipe = build_tiny_pipeline()
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    items = scan_dataset(load_config(None, {"data.path": str(DATA)}).data)
    pixels = [prepare_image(open_image(i.image_path), resolution, resolution)[0] for i in items]
    captions = [i.caption for i in items]
    timings = []
    for step in range(steps):
        started = time.perf_counter()
        index = [(step * batch_size + k) % len(items) for k in range(batch_size)]
        batch = torch.stack([pixels[i] for i in index])
        latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer([captions[i] for i in index], max_length=tokenizer.model_max_length,
                        padding="max_length", truncation=True, return_tensors="pt").input_ids
        encoder_hidden_states = text_encoder(ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - started)
    return 1.0 / statistics.median(timings[2:])


def ours_steps_per_s(steps: int, resolution: int, batch_size: int) -> float:
    """Steps/s of `train()` itself, from the times of its progress events (model loading excluded)."""
    stamps: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, Progress):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        config = load_config(None, {"data.path": str(DATA), "data.resolution": resolution, "train.steps": steps,
                                    "train.batch_size": batch_size, "export.output_dir": out})
        train(config, on_event=on_event)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return 1.0 / statistics.median(gaps[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    for round_index in range(args.rounds):
        base = baseline_steps_per_s(args.steps, args.resolution, args.batch_size)
        ours = ours_steps_per_s(args.steps, args.resolution, args.batch_size)
        ratios.append(ours / base)
        print(f"round {round_index + 1}: baseline {base:.2f} steps/s, lora-studio {ours:.2f} steps/s, "
              f"ratio {ours / base:.2f}x")
    print(f"median ratio (lora-studio / diffusers-example-style baseline): {statistics.median(ratios):.2f}x "
          f"at {args.resolution}px, batch {args.batch_size}, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}")


if __name__ == "__main__":
    main()
