"""The constructed tiny VAE (trainer.models.vae_init): its latent is the 8 x 8 block means, exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.models.pretrain import regroup_vae, to_tensor
from trainer.models.shapes import make_pictures
from trainer.models.tiny import build_tiny_pipeline
from trainer.models.vae_init import block_mean_init


@pytest.fixture(scope="module")
def vae():
    vae = regroup_vae(build_tiny_pipeline("tiny-random").vae, 4)
    block_mean_init(vae)
    return vae.eval()


@torch.no_grad()
def test_the_latent_is_the_block_means_and_decodes_to_them_upsampled(vae):
    x = to_tensor([image for image, _, _ in make_pictures(5, 4)])
    posterior = vae.encode(x).latent_dist
    means = F.avg_pool2d(x, 8)
    expected = torch.cat([means, means.mean(dim=1, keepdim=True)], dim=1)  # R, G, B and luminance
    assert torch.allclose(posterior.mean, expected, atol=1e-3)
    assert float(posterior.std.max()) < 0.01  # a sample is the mean
    recon = vae.decode(posterior.mean).sample
    assert torch.allclose(recon, F.interpolate(means, scale_factor=8, mode="nearest"), atol=1e-3)


@torch.no_grad()
def test_held_out_pictures_reconstruct_at_25_db(vae):
    values = []
    for image, _, _ in make_pictures(777, 24, held_out=True):
        x = to_tensor([image])
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        values.append(10 * np.log10(255.0 ** 2 / float(((recon - x) * 127.5).pow(2).mean())))
    assert np.mean(values) >= 25.0


def test_a_vae_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="4 GroupNorm groups"):
        block_mean_init(build_tiny_pipeline("tiny-random").vae)  # 16 groups
