"""Training speed: LoRA Studio's `train()` against a loop written like diffusers' `train_text_to_image_lora.py`.

    python bench/train_speed.py [--steps 20] [--rounds 3] [--resolution 128] [--batch-size 12]

Both run in this one process on the same tiny model, data, batch, resolution and step count, alternating
(baseline, ours, baseline, ours) so machine noise hits both alike. The baseline follows the example's loop: an
accelerate Accelerator, a DataLoader whose dataset decodes, crops and tokenizes on each access, the VAE and the
text encoder on every step, clipping, the LR schedule and the gathered loss; ours caches latents and text.
Prints steps/s and the ratio.

The default batch, 12, is what the example's own default (`--train_batch_size 16`) trains on the 12 example
images: one whole-dataset batch a step. The batch must divide 12 so that both loops train full batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from peft import LoraConfig  # noqa: E402

from trainer.config import load_config  # noqa: E402
from trainer.data import scan_dataset  # noqa: E402
from trainer.events import Progress  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.models.tiny import build_tiny_pipeline  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "datasets" / "example"


class ExampleScriptDataset(torch.utils.data.Dataset):
    """What the example's `train_dataset.with_transform(preprocess_train)` does on every access: decode the
    image, resize, centre-crop, to a [-1, 1] tensor, and tokenize the caption (torchvision is not a dependency
    here, so PIL and numpy do its Resize/CenterCrop/ToTensor/Normalize)."""

    def __init__(self, items, tokenizer, resolution: int):
        self.items, self.tokenizer, self.resolution = items, tokenizer, resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = Image.open(item.image_path).convert("RGB")
        scale = self.resolution / min(image.size)
        image = image.resize((max(self.resolution, round(image.width * scale)),
                              max(self.resolution, round(image.height * scale))), Image.BILINEAR)
        left, top = (image.width - self.resolution) // 2, (image.height - self.resolution) // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        ids = self.tokenizer(item.caption, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids[0]
        return {"pixel_values": pixels, "input_ids": ids}


def collate_fn(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
            "input_ids": torch.stack([e["input_ids"] for e in examples])}


def baseline_steps_per_s(steps: int, resolution: int, batch_size: int, seed: int = 0) -> float:
    """The diffusers example's training loop: accelerate, a DataLoader that decodes and tokenizes on each
    access, VAE encode + text encoder + UNet on every step, clipping, schedule, the logged loss."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(gradient_accumulation_steps=1)
    set_seed(seed)
    pipe = build_tiny_pipeline()
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    items = scan_dataset(load_config(None, {"data.path": str(DATA)}).data)
    dataset = ExampleScriptDataset(items, tokenizer, resolution)
    # Shuffled epochs back to back, so every batch is full even when the batch is larger than the dataset
    # (the example's shuffle=True would give a short last batch: less work per step than ours).
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=steps * batch_size)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, collate_fn=collate_fn, batch_size=batch_size,
                                         num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    unet.train()
    timings: list[float] = []
    started = time.perf_counter()
    for batch in loader:  # the DataLoader's decode, transform and tokenize are part of each step's time
        with accelerator.accumulate(unet):
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      device=latents.device).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            train_loss = accelerator.gather(loss.repeat(batch_size)).mean().item()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_layers, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        accelerator.log({"train_loss": train_loss}, step=len(timings))
        timings.append(time.perf_counter() - started)
        started = time.perf_counter()
    accelerator.end_training()
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=12,
                        help="12: the example's default batch (16) on the 12 example images")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = len(scan_dataset(load_config(None, {"data.path": str(DATA)}).data))
    if images % args.batch_size:
        # train() ends each epoch with a short batch, as the example's DataLoader does; the ratio would then
        # compare a full baseline batch with a short one of ours.
        parser.error(f"--batch-size must divide the {images} example images, so that every step of both loops "
                     f"trains a full batch (try {', '.join(str(b) for b in range(1, images + 1) if images % b == 0)})")
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
