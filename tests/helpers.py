"""Test helpers that run real things: a deterministic denoising loss of a pipeline on one image."""

from __future__ import annotations

import torch

from trainer.data import open_image, prepare_image


@torch.no_grad()
def eval_loss(pipe, image_path, caption: str, resolution: int = 64, samples: int = 32, seed: int = 0) -> float:
    """Mean epsilon-prediction error over fixed (noise, timestep) pairs: lower means the model fits the image."""
    pixels, _ = prepare_image(open_image(image_path), resolution, resolution)
    latents = pipe.vae.encode(pixels.unsqueeze(0)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer([caption], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    text = pipe.text_encoder(ids.input_ids)[0]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, *latents.shape[1:]), generator=generator)
    timesteps = torch.linspace(50, 950, samples).long()
    noisy = pipe.scheduler.add_noise(latents.expand(samples, -1, -1, -1), noise, timesteps)
    prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=text.expand(samples, -1, -1)).sample
    return torch.nn.functional.mse_loss(prediction, noise).item()


def lora_modules(unet, adapter: str) -> list[str]:
    return [name for name, module in unet.named_modules() if hasattr(module, "lora_A") and adapter in module.lora_A]


def image_array(pipe, prompt: str, seed: int = 0, steps: int = 4, size: int = 64, **kwargs):
    import numpy as np

    generator = torch.Generator().manual_seed(seed)
    image = pipe(prompt, num_inference_steps=steps, width=size, height=size, generator=generator,
                 output_type="np", **kwargs).images[0]
    return np.asarray(image)
