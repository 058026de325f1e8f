"""Tiled VAE nodes on the tiny SD1 checkpoint, against ComfyUI's tiled decode/encode written out in the test.

Reference (ComfyUI's VAE.decode_tiled_ / encode_tiled_ over comfy.utils.tiled_scale): the mean of three tilings
(2t x t/2, t/2 x 2t and t x t as height x width); tiles start every tile - overlap, the last one clipped to the edge;
each output tile is weighted by min(1, (i + 1) / f) * min(1, (L - i) / f) along each side (f = overlap * scale output
pixels, L the tile's output length, no ramp when f >= L); the weighted sum is divided by the summed weights.
"""

from __future__ import annotations

import pytest
import torch
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.vae_nodes import VAEDecode, VAEEncode
from latentgraph.nodes.sd.vae_tiled_nodes import VAEDecodeTiled, VAEEncodeTiled

from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae(shared_executor):
    return CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))[2]


def ramp(length: int, feather: int) -> torch.Tensor:
    i = torch.arange(length, dtype=torch.float32)
    if feather >= length or feather == 0:
        return torch.ones(length)
    return torch.clamp((i + 1) / feather, max=1) * torch.clamp((length - i) / feather, max=1)


def starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    out, p = [], 0
    while p < size - overlap:
        out.append(min(size - overlap, p))
        p += tile - overlap
    return out


def reference_tiling(x: torch.Tensor, fn, tile_h: int, tile_w: int, overlap: int, scale: float, channels: int):
    h, w = x.shape[-2:]
    if h <= tile_h and w <= tile_w:
        return fn(x)
    total = torch.zeros(1, channels, round(h * scale), round(w * scale))
    weight = torch.zeros_like(total)
    f = round(overlap * scale)
    for top in starts(h, tile_h, overlap):
        for left in starts(w, tile_w, overlap):
            out = fn(x[:, :, top:top + tile_h, left:left + tile_w])
            mask = ramp(out.shape[2], f)[:, None] * ramp(out.shape[3], f)[None, :]
            r, c = round(top * scale), round(left * scale)
            total[:, :, r:r + out.shape[2], c:c + out.shape[3]] += out * mask
            weight[:, :, r:r + out.shape[2], c:c + out.shape[3]] += mask
    return total / weight


def test_tiled_decode_equals_comfyui_three_pass_reference(vae, shared_executor):
    ctx = run_context(shared_executor.env)
    latent = torch.randn(1, 4, 12, 18, generator=torch.Generator().manual_seed(0))
    (image,) = VAEDecodeTiled(samples={"samples": latent}, vae=vae, tile_size=64, overlap=16).execute(ctx)
    assert image.shape == (1, 96, 144, 3)
    with vae.use() as model, torch.no_grad():
        fn = lambda z: model.decode(z).sample.float()  # noqa: E731
        t, o = 8, 2  # 64 and 16 pixels in latent pixels
        tilings = ((2 * t, t // 2), (t // 2, 2 * t), (t, t))
        passes = [reference_tiling(latent, fn, th, tw, o, 8, 3) for th, tw in tilings]
    expected = (sum(passes) / 3 / 2 + 0.5).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=1e-5)


def test_tiled_decode_of_a_latent_within_one_tile_is_the_plain_decode(vae, shared_executor):
    ctx = run_context(shared_executor.env)
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    (tiled,) = VAEDecodeTiled(samples={"samples": latent}, vae=vae, tile_size=512, overlap=64).execute(ctx)
    (plain,) = VAEDecode(samples={"samples": latent}, vae=vae).execute(ctx)
    torch.testing.assert_close(tiled, plain, atol=1e-5, rtol=1e-5)


def test_tiled_encode_equals_comfyui_three_pass_reference(vae, shared_executor):
    ctx = run_context(shared_executor.env)
    pixels = torch.rand(1, 100, 136, 3, generator=torch.Generator().manual_seed(2))  # cropped to 96 x 136
    (latent,) = VAEEncodeTiled(pixels=pixels, vae=vae, tile_size=64, overlap=16).execute(ctx)
    assert latent["samples"].shape == (1, 4, 12, 17)
    cropped = pixels[:, 2:98].movedim(-1, 1)
    with vae.use() as model, torch.no_grad():
        fn = lambda x: model.encode(x * 2 - 1).latent_dist.mode().float()  # noqa: E731
        passes = [reference_tiling(cropped, fn, th, tw, 16, 1 / 8, 4) for th, tw in ((64, 64), (32, 128), (128, 32))]
    torch.testing.assert_close(latent["samples"], sum(passes) / 3, atol=1e-5, rtol=1e-5)
    assert VAEEncodeTiled.check({"tile_size": 64, "overlap": 32}, shared_executor.env)  # the 32-wide pass
    (small,) = VAEEncodeTiled(pixels=pixels[:, :64, :64], vae=vae, tile_size=512, overlap=64).execute(ctx)
    (plain,) = VAEEncode(pixels=pixels[:, :64, :64], vae=vae).execute(ctx)
    torch.testing.assert_close(small["samples"], plain["samples"], atol=1e-5, rtol=1e-5)
