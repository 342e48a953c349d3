"""FLOPs of one VAE encode and one UNet forward, for real SD 1.5 (built on the meta device from the shipped
configs, so no weights are needed) and for the embedded tiny model: is the tiny VAE-to-UNet cost ratio like
the real one? (That ratio is what caching latents saves.)

    python bench/flops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ASSETS = Path(__file__).resolve().parents[1] / "trainer" / "models" / "assets" / "sd15"


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def vae_and_unet_flops(unet, vae, resolution: int, context_dim: int, device: str) -> tuple[int, int]:
    """FLOPs of encoding one image and of one UNet forward on its latent (batch 1, 77-token context)."""
    image = torch.randn(1, 3, resolution, resolution, device=device)
    latent = torch.randn(1, 4, resolution // 8, resolution // 8, device=device)
    context = torch.randn(1, 77, context_dim, device=device)
    timestep = torch.tensor([500], device=device)
    return (flops(lambda: vae.encode(image)),
            flops(lambda: unet(latent, timestep, encoder_hidden_states=context)))


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from trainer.models.tiny import build_tiny_pipeline

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ASSETS / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(ASSETS / "vae"))
    pipe = build_tiny_pipeline()
    for name, (v, u) in (("SD 1.5 at 512 px", vae_and_unet_flops(unet, vae, 512, 768, "meta")),
                         ("tiny at 128 px", vae_and_unet_flops(pipe.unet, pipe.vae, 128, 64, "cpu"))):
        print(f"{name}: VAE encode {v / 1e9:.2f} GFLOP, UNet forward {u / 1e9:.2f} GFLOP, "
              f"VAE encode / UNet forward+backward (3x forward) = {v / (3 * u):.2f}")


if __name__ == "__main__":
    main()
