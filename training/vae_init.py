"""A hand-set starting point for the demo VAE: the encoder averages 8x8 blocks of RGB into the latent and the
decoder upsamples them back (with a blur), so training starts from correct colours and only has to learn edges.

Trained from random weights, a narrow AutoencoderKL spends thousands of steps before it even reproduces flat
colours (its output GroupNorm discards each image's level); from this start it needs minutes on one CPU core.
Every residual branch starts at zero (the block is the identity), downsamplers average 2x2, upsamplers blur, and
the two output GroupNorms (one group over all channels) see large constant +K/-K "reference" channels, so that
their mean is 0 and their spread a constant: the norm then passes colours through as a fixed scaling.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

SIGNALS = 4  # r, g, b and one free latent channel; stored as +s in channels 0..3 and -s in 4..7
REFERENCE = 10.0
OFFSET = 8.0  # keeps SiLU in its linear range
LOGVAR = -7.0


def _zero(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _center_tap(conv: torch.nn.Conv2d, pairs: list[tuple[int, int, float]]) -> None:
    """Zeroes `conv` and sets its centre tap out[o] += w * in[i] for every (o, i, w)."""
    _zero(conv)
    k = conv.kernel_size[0] // 2
    with torch.no_grad():
        for o, i, w in pairs:
            conv.weight[o, i, k, k] = w


def _slots(signals: int = SIGNALS) -> list[tuple[int, int, float]]:
    return [(c, c, 1.0) for c in range(2 * signals)]


def _identity_blocks(module: torch.nn.Module) -> None:
    """Makes every resnet and attention of `module` the identity (zero residual branch, identity shortcut)."""
    for name, sub in module.named_modules():
        if name.endswith("conv2") or name.endswith("to_out.0"):
            _zero(sub)
        if name.endswith("conv_shortcut") and sub is not None:
            _center_tap(sub, _slots())


def _add_references(conv2: torch.nn.Conv2d) -> int:
    """Biases half the channels after the signal slots to +K and half to -K; returns how many."""
    free = conv2.out_channels - 2 * SIGNALS
    count = free // 2 * 2
    with torch.no_grad():
        for j in range(count):
            conv2.bias[2 * SIGNALS + j] = REFERENCE if j % 2 == 0 else -REFERENCE
    return count


def _pass_through_norm(norm: torch.nn.GroupNorm, references: int, signals: int) -> None:
    """Output = signal + OFFSET on the +signal channels, 0 elsewhere (given references dominate the spread)."""
    spread = (references * REFERENCE**2 / norm.num_channels) ** 0.5
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()
        norm.weight[:signals] = spread
        norm.bias[:signals] = OFFSET


def init_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """Sets `vae` (one norm group, >= 24 channels per level, 4 latent channels) to the block-average start."""
    if vae.config.norm_num_groups != 1 or vae.config.latent_channels != SIGNALS:
        raise ValueError("the block-average start needs norm_num_groups=1 and 4 latent channels")
    enc, dec = vae.encoder, vae.decoder
    _identity_blocks(enc)
    _identity_blocks(dec)
    _center_tap(enc.conv_in, [(c, c, 1.0) for c in range(3)] + [(SIGNALS + c, c, -1.0) for c in range(3)])
    for block in enc.down_blocks:
        for down in block.downsamplers or []:
            _zero(down.conv)
            with torch.no_grad():
                for c in range(2 * SIGNALS):
                    down.conv.weight[c, c, :2, :2] = 0.25
    refs = _add_references(enc.mid_block.resnets[-1].conv2)
    _pass_through_norm(enc.conv_norm_out, refs, SIGNALS)
    _center_tap(enc.conv_out, [(c, c, 1.0) for c in range(SIGNALS)])
    with torch.no_grad():
        enc.conv_out.bias[:SIGNALS] = -OFFSET
        enc.conv_out.bias[SIGNALS:] = LOGVAR
    _center_tap(vae.quant_conv, [(c, c, 1.0) for c in range(2 * SIGNALS)])
    _center_tap(vae.post_quant_conv, [(c, c, 1.0) for c in range(SIGNALS)])
    _center_tap(dec.conv_in, [(c, c, 1.0) for c in range(SIGNALS)] + [(SIGNALS + c, c, -1.0) for c in range(SIGNALS)])
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur, blur) / 16
    for block in dec.up_blocks:
        for up in block.upsamplers or []:
            _zero(up.conv)
            with torch.no_grad():
                for c in range(2 * SIGNALS):
                    up.conv.weight[c, c] = blur
    refs = _add_references(dec.up_blocks[-1].resnets[-1].conv2)
    _pass_through_norm(dec.conv_norm_out, refs, 3)
    _center_tap(dec.conv_out, [(c, c, 1.0) for c in range(3)])
    with torch.no_grad():
        dec.conv_out.bias[:] = -OFFSET
    return vae
