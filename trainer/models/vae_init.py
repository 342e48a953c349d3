"""An analytic starting point for the tiny VAE: latents that are the picture's 8 x 8 block means.

    vae = regroup_vae(build_tiny_pipeline("sd15").vae, 4)
    block_mean_init(vae)          # encode -> decode now reconstructs at about 25 dB PSNR, untrained

Trained from random weights on a 2-core CPU, the tiny VAE reached 15 dB after 600 steps (9 minutes): most of its
time goes to discovering that a latent should carry the colours at all. This sets weights (same keys and
shapes, nothing added) so that the encoder computes, per 8 x 8 block, the mean of R, G, B and the
luminance, and the decoder upsamples them back (nearest); pretraining keeps it as it is (fine-tuning the
decoder from here did not raise its PSNR: bench/RESULTS.md).

How the layers are made to pass values through unchanged:
- every residual block's last conv and every attention's output projection are zero, so the blocks are
  identities that training can grow out of (their first conv keeps its random weights, so gradients flow);
- a channel holds the constant `LEVEL` beside the signals, and a GroupNorm group holds the layout
  [x, -x, LEVEL, -LEVEL]: its mean is 0 and its variance is dominated by LEVEL**2, so normalising it scales
  x by a known constant (undone by the norm's weight), and the -x copy cancels SiLU's curvature when the
  output conv takes (SiLU(x + OFFSET) - SiLU(-x + OFFSET)) / 2 = x (SiLU is linear that far from 0);
- the encoder's downsamplers (stride 2 after a (0, 1, 0, 1) pad) average each 2 x 2 block exactly;
- the posterior's log-variance is -10, so a sampled latent is its mean to within 1 %.
"""

from __future__ import annotations

import math

import torch

LEVEL = 100.0
OFFSET = 12.0
SIGNALS = 4
"""R, G, B and luminance: the four latent channels."""


def block_mean_init(vae) -> None:
    """Overwrite the weights of a tiny AutoencoderKL (4 GroupNorm groups) with the block-mean construction."""
    if vae.config.norm_num_groups != SIGNALS or vae.config.latent_channels != SIGNALS:
        raise ValueError("block_mean_init needs a VAE with 4 latent channels and 4 GroupNorm groups")
    with torch.no_grad():
        _identity_blocks(vae)
        _encoder(vae.encoder)
        _eye(vae.quant_conv.weight, vae.quant_conv.weight.shape[0], centre=False)
        vae.quant_conv.bias.zero_()
        _eye(vae.post_quant_conv.weight, SIGNALS, centre=False)
        vae.post_quant_conv.bias.zero_()
        _decoder(vae.decoder)


def _identity_blocks(vae) -> None:
    for name, module in vae.named_modules():
        if name.endswith(("resnets.0", "resnets.1", "resnets.2")) and hasattr(module, "conv2"):
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
        if hasattr(module, "to_out"):
            module.to_out[0].weight.zero_()
            module.to_out[0].bias.zero_()


def _eye(weight: torch.Tensor, count: int, centre: bool = True) -> None:
    """weight[c, c] = 1 (at the 3 x 3 centre tap, or the only tap of a 1 x 1 conv) for c < count."""
    weight.zero_()
    for c in range(count):
        if centre:
            weight[c, c, 1, 1] = 1.0
        else:
            weight[c, c, 0, 0] = 1.0


def _carry(conv, count: int) -> None:
    """A shortcut conv that passes its first `count` channels through."""
    _eye(conv.weight, count, centre=False)
    conv.bias.zero_()


def _layout(conv, per_group: int) -> None:
    """A shortcut conv from [R, G, B, L, LEVEL, ...] to groups of `per_group`: [x, -x, LEVEL, -LEVEL, 0...]."""
    conv.weight.zero_()
    conv.bias.zero_()
    for k in range(SIGNALS):
        base = k * per_group
        conv.weight[base, k, 0, 0] = 1.0
        conv.weight[base + 1, k, 0, 0] = -1.0
        conv.weight[base + 2, SIGNALS, 0, 0] = 1.0
        conv.weight[base + 3, SIGNALS, 0, 0] = -1.0


def _norm_out(norm, per_group: int) -> None:
    """Undo the group's scaling (std = LEVEL * sqrt(4 / per_group)) and lift x to where SiLU is linear."""
    norm.weight.zero_()
    norm.bias.zero_()
    for k in range(SIGNALS):
        for c in (k * per_group, k * per_group + 1):
            norm.weight[c] = LEVEL / math.sqrt(per_group / 2)
            norm.bias[c] = OFFSET


def _read_out(conv, per_group: int, outputs: int) -> None:
    """out_k = (SiLU(x_k + OFFSET) - SiLU(-x_k + OFFSET)) / 2 = x_k."""
    conv.weight.zero_()
    conv.bias.zero_()
    for k in range(outputs):
        conv.weight[k, k * per_group, 1, 1] = 0.5
        conv.weight[k, k * per_group + 1, 1, 1] = -0.5


def _signal_path(blocks, norm_out, what: str) -> int:
    """Wire the two width-changing residual blocks' shortcuts (carry, then lay out in groups); the group size."""
    shortcuts = [r.conv_shortcut for b in blocks for r in b.resnets if r.conv_shortcut is not None]
    if len(shortcuts) != 2:
        raise ValueError(f"block_mean_init expects the tiny VAE's two {what} blocks")
    _carry(shortcuts[0], SIGNALS + 1)
    per_group = norm_out.num_channels // SIGNALS
    _layout(shortcuts[1], per_group)
    return per_group


def _encoder(encoder) -> None:
    conv_in = encoder.conv_in
    conv_in.weight.zero_()
    conv_in.bias.zero_()
    for c in range(3):
        conv_in.weight[c, c, 1, 1] = 1.0
        conv_in.weight[3, c, 1, 1] = 1.0 / 3  # luminance, the fourth latent channel
    conv_in.bias[SIGNALS] = LEVEL
    per_group = _signal_path(encoder.down_blocks, encoder.conv_norm_out, "widening encoder")
    for block in encoder.down_blocks:
        for down in block.downsamplers or []:
            down.conv.weight.zero_()
            down.conv.bias.zero_()
            for c in range(down.conv.weight.shape[0]):
                down.conv.weight[c, c, :2, :2] = 0.25  # the mean of the 2 x 2 block
    _norm_out(encoder.conv_norm_out, per_group)
    _read_out(encoder.conv_out, per_group, SIGNALS)
    encoder.conv_out.bias[SIGNALS:] = -10.0  # log-variance


def _decoder(decoder) -> None:
    _eye(decoder.conv_in.weight, SIGNALS)
    decoder.conv_in.bias.zero_()
    decoder.conv_in.bias[SIGNALS] = LEVEL
    per_group = _signal_path(decoder.up_blocks, decoder.conv_norm_out, "narrowing decoder")
    for block in decoder.up_blocks:
        for up in block.upsamplers or []:
            _eye(up.conv.weight, up.conv.weight.shape[0])
            up.conv.bias.zero_()
    _norm_out(decoder.conv_norm_out, per_group)
    _read_out(decoder.conv_out, per_group, 3)
