"""FreeU, FreeU_V2 and RescaleCFG against ComfyUI's formulas written out independently here, and their effect on
the tiny SD1 model.

References (ComfyUI comfy_extras/nodes_freelunch.py, nodes_model_advanced.py):
- FreeU's Fourier filter: per channel, the centred 2-D spectrum (fftshift of the FFT) has its [H/2 - 1, H/2 + 1) x
  [W/2 - 1, W/2 + 1) square multiplied by s; the filtered map is the real part of the inverse. Here with numpy.
- FreeU backbone: the first half of the channels times b; FreeU_V2: times 1 + (b - 1) * m, m the channel mean
  min-max normalised over each image.
- RescaleCFG: on v-predictions v = (x / (s^2 + 1) - x0) * sqrt(s^2 + 1) / s of the clean estimates x0,
  v_cfg = v_u + cfg * (v_c - v_u), rescaled by std(v_c) / std(v_cfg) per image and mixed by the multiplier; the
  result's clean estimate is x / (s^2 + 1) - v_final * s / sqrt(s^2 + 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.model_patch_nodes import (
    FreeU,
    FreeU_V2,
    FreeUPatch,
    RescaleCFG,
    fourier_filter,
    freeu_backbone,
    freeu_v2_backbone,
    rescale_cfg,
)
from latentgraph.nodes.sd.sampling import GuideStep, guided, sample
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

from .conftest import TINY
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_filter(x: np.ndarray, scale: float) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            spectrum = np.fft.fftshift(np.fft.fft2(x[b, c]))
            h, w = spectrum.shape
            spectrum[h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] *= scale
            out[b, c] = np.fft.ifft2(np.fft.ifftshift(spectrum)).real
    return out


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 10)])
def test_fourier_filter_matches_numpy(shape) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = fourier_filter(x, 1, 0.3).numpy()
    diff = float(np.abs(ours - numpy_filter(x.numpy(), 0.3)).max())
    print(f"Fourier filter {shape}: max diff = {diff:.3g}")
    assert diff < 1e-5  # the filter runs in float32, as ComfyUI's does
    assert float(np.abs(fourier_filter(x, 1, 1.0).numpy() - x.numpy()).max()) < 1e-5  # scale 1: identity


def test_backbones_match_the_formulas() -> None:
    h = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v1 = freeu_backbone(h, 1.4)
    assert torch.equal(v1[:, 3:], h[:, 3:]) and float((v1[:, :3] - h[:, :3] * 1.4).abs().max()) < 1e-12
    v2 = freeu_v2_backbone(h, 1.4)
    for b in range(2):
        m = h[b].numpy().mean(axis=0)
        m = (m - m.min()) / (m.max() - m.min())
        expected = h[b, :3].numpy() * ((1.4 - 1) * m + 1)
        assert float(np.abs(v2[b, :3].numpy() - expected).max()) < 1e-12
    assert torch.equal(v2[:, 3:], h[:, 3:])


def test_freeu_patch_picks_scales_by_channel_count() -> None:
    """Base channels 32: a 128-channel backbone gets b1/s1, a 64-channel one b2/s2, others nothing."""
    patch = FreeUPatch(b1=2.0, b2=3.0, s1=0.5, s2=0.25)
    g = torch.Generator().manual_seed(2)
    for channels, (b, s) in ((128, (2.0, 0.5)), (64, (3.0, 0.25))):
        h, skip = torch.randn(1, channels, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
        out_h, out_skip = patch.patch(h, skip, 32)
        assert torch.allclose(out_h[:, :channels // 2], h[:, :channels // 2] * b)
        assert np.abs(out_skip.numpy() - numpy_filter(skip.numpy(), s)).max() < 1e-5
    h, skip = torch.randn(1, 32, 8, 8, generator=g), torch.randn(1, 32, 8, 8, generator=g)
    assert patch.patch(h, skip, 32) == (h, skip)


@pytest.fixture(scope="module")
def sd1(shared_executor) -> dict:
    ctx = run_context(shared_executor.env)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(ctx)
    return {"model": model, "cond": CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0],
            "uncond": CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]}


def unet_output(model, cond: list, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with model.use() as net, torch.no_grad():
        return net(x, t, encoder_hidden_states=cond[0][0]).sample.float()


@pytest.mark.parametrize("node", [FreeU, FreeU_V2])
def test_freeu_changes_the_unet_only_while_the_patched_model_runs(sd1, node) -> None:
    """The tiny UNet (base 32 channels, up blocks at 64 and 32) is changed where its 64-channel backbone meets a
    skip connection; b = s = 1 is the identity; the original MODEL is unchanged and differs from the patched one."""
    model, x, t = sd1["model"], torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)), \
        torch.tensor(500.0)
    before = unet_output(model, sd1["cond"], x, t)
    (patched,) = node(model=model, b1=1.1, b2=1.3, s1=0.9, s2=0.4).execute(None)
    (identity,) = node(model=model, b1=1.0, b2=1.0, s1=1.0, s2=1.0).execute(None)
    assert patched != model and patched.component == model.component
    changed = unet_output(patched, sd1["cond"], x, t)
    print(f"{node.__name__}: max change of the UNet output = {float((changed - before).abs().max()):.3g}")
    assert float((changed - before).abs().max()) > 1e-3
    assert float((unet_output(identity, sd1["cond"], x, t) - before).abs().max()) < 1e-5
    assert torch.equal(unet_output(model, sd1["cond"], x, t), before)  # hooks removed, weights untouched


def comfy_rescale_reference(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, x: torch.Tensor, sigma: float,
                            cfg: float, multiplier: float) -> torch.Tensor:
    """The clean estimate RescaleCFG gives, in terms of v-predictions (see the module docstring)."""
    s2 = sigma * sigma + 1.0
    v_c = (x / s2 - x0_cond) * s2 ** 0.5 / sigma
    v_u = (x / s2 - x0_uncond) * s2 ** 0.5 / sigma
    v_cfg = v_u + cfg * (v_c - v_u)
    ratio = v_c.flatten(1).std(dim=1).view(-1, 1, 1, 1) / v_cfg.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    v_final = multiplier * v_cfg * ratio + (1 - multiplier) * v_cfg
    return x / s2 - v_final * sigma / s2 ** 0.5


def test_rescale_cfg_matches_the_formula_on_hand_made_tensors() -> None:
    g = torch.Generator().manual_seed(4)
    x, c, u = (torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([3.0, 3.0], dtype=torch.float64)
    ours = x - rescale_cfg({"cond": x - c, "uncond": x - u, "cond_scale": 7.0, "sigma": sigma, "input": x}, 0.7)
    diff = float((ours - comfy_rescale_reference(c, u, x, 3.0, 7.0, 0.7)).abs().max())
    print(f"RescaleCFG formula: max diff = {diff:.3g}")
    assert diff < 1e-10


def test_rescale_cfg_in_the_sampler_on_the_tiny_model(sd1) -> None:
    """One guided() call of the RescaleCFG-patched model equals the reference applied to the clean estimates of two
    direct UNet calls (eps model: x0 = x - sigma * eps); multiplier 0 is plain CFG; a full run differs from plain."""
    (patched,) = RescaleCFG(model=sd1["model"], multiplier=0.7).execute(None)
    (plain_cfg,) = RescaleCFG(model=sd1["model"], multiplier=0.0).execute(None)
    sigma, t = 2.5, torch.tensor(600.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * (sigma ** 2 + 1) ** 0.5
    step = GuideStep(sigma, lambda p: 0.0, x, lambda eps: x - sigma * eps, lambda x0: (x - x0) / sigma)
    with patched.use() as net, torch.no_grad():
        ours = guided(net, x, t, sd1["cond"], sd1["uncond"], 6.0, patched.denoiser(), step,
                      patched.sampler_cfg_function)
        no_rescale = guided(net, x, t, sd1["cond"], sd1["uncond"], 6.0, patched.denoiser(), step,
                            plain_cfg.sampler_cfg_function)
        plain = guided(net, x, t, sd1["cond"], sd1["uncond"], 6.0, patched.denoiser())
        eps_c = net(x, t, encoder_hidden_states=sd1["cond"][0][0]).sample.float()
        eps_u = net(x, t, encoder_hidden_states=sd1["uncond"][0][0]).sample.float()
    x0 = comfy_rescale_reference(x - sigma * eps_c, x - sigma * eps_u, x, sigma, 6.0, 0.7)
    diff = float((ours - (x - x0) / sigma).abs().max())
    print(f"RescaleCFG on the tiny UNet: max diff = {diff:.3g}")
    assert diff < 1e-4
    assert float((no_rescale - plain).abs().max()) < 1e-4
    assert float((ours - plain).abs().max()) > 1e-3
    common = dict(seed=3, steps=4, cfg=6.0, sampler_name="euler", scheduler_name="normal", positive=sd1["cond"],
                  negative=sd1["uncond"], latent={"samples": torch.zeros(1, 4, 8, 8)})
    rescaled_run = sample(patched, **common)["samples"]
    plain_run = sample(sd1["model"], **common)["samples"]
    assert float((rescaled_run - plain_run).abs().max()) > 1e-3
