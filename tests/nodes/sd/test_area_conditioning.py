"""Area, mask and timestep-range conditioning against ComfyUI's formulas, written out by hand here.

Reference (ComfyUI comfy/samplers.py, calc_cond_batch / get_area_and_mult / resolve_areas_and_cond_masks /
create_cond_with_same_area_if_none / calculate_start_end_timesteps): each entry runs the model on its area of the
latent; its output is weighted per pixel by mask * mask_strength * strength, an area without mask fading in over
the 8 latent pixels of each inner edge ((t + 1) / 8 at the t-th pixel from the edge); every pixel is the weighted sum
over the entries covering it divided by (1e-37 + the sum of weights). Each area entry of one side gets a counterpart
on the other side conditioned like that side's entry without area. An entry with start/end percents is skipped where
the call's sigma is above percent_to_sigma(start) or below percent_to_sigma(end), with percent_to_sigma(p) the
training schedule's sigma at timestep (1 - p) * 999 (log-linear interpolation).

The references below call the tiny SD1 UNet directly on crops (`net(x, t, encoder_hidden_states=...)`) and never
use the code under test beyond the node that builds the conditioning.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentgraph.nodes.sd.conditioning_nodes import (
    ConditioningSetArea,
    ConditioningSetAreaPercentage,
    ConditioningSetMask,
    ConditioningSetTimestepRange,
)
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sampling import GuideStep, guided, sample
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

from .conftest import TINY
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 8, 32  # latent size: a 256x64 image


@pytest.fixture(scope="module")
def sd1(shared_executor) -> dict:
    ctx = run_context(shared_executor.env)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(ctx)
    prompts = {name: CLIPTextEncode(text=text, clip=clip).execute(ctx)[0]
               for name, text in (("a", "a red house"), ("b", "a green tree"), ("c", "a lake at night"),
                                  ("n", "blurry"))}
    return {"model": model, **prompts}


def node(cls, **inputs) -> list:
    return cls(**inputs).execute(None)[0]


def direct(net, x: torch.Tensor, t: torch.Tensor, cond: list) -> torch.Tensor:
    """The UNet's output for one plain entry, called directly."""
    return net(x, t, encoder_hidden_states=cond[0][0].expand(x.shape[0], -1, -1)).sample.float()


def latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(seed))


def padded(part: torch.Tensor, top: int, left: int) -> torch.Tensor:
    full = torch.zeros(part.shape[0], part.shape[1], H, W)
    full[:, :, top:top + part.shape[2], left:left + part.shape[3]] = part
    return full


def left_fade(width: int) -> torch.Tensor:
    """Weights of an area whose left edge is inside the image: (t + 1) / 8 over its first 8 columns."""
    return torch.tensor([min(1.0, (c + 1) / 8) for c in range(width)])


def right_fade(width: int) -> torch.Tensor:
    return torch.tensor([min(1.0, (width - c) / 8) for c in range(width)])


def test_two_overlapping_areas_and_a_base_prompt_blend_as_comfyui(sd1) -> None:
    """A over columns 0-19, B over 12-31 (pixels 0-159 and 96-255), the base prompt C everywhere at strength 0.5,
    a plain negative; cfg 5. The negative side gets A's and B's areas conditioned by the negative."""
    a = node(ConditioningSetArea, conditioning=sd1["a"], width=160, height=64, x=0, y=0, strength=1.0)
    b = node(ConditioningSetArea, conditioning=sd1["b"], width=160, height=64, x=96, y=0, strength=1.5)
    c = [[sd1["c"][0][0], {**sd1["c"][0][1], "strength": 0.5}]]
    positive, negative = a + b + c, sd1["n"]
    x, t = latent(1), torch.tensor(600.0)
    with sd1["model"].use() as net, torch.no_grad():
        ours = guided(net, x, t, positive, negative, 5.0, sd1["model"].denoiser())
        weight_a = right_fade(20).expand(H, 20)  # A's right edge (column 20) is inside, its left is the border
        weight_b = left_fade(20).expand(H, 20) * 1.5
        sides = []
        for text_a, text_b, text_c in ((sd1["a"], sd1["b"], c), (sd1["n"], sd1["n"], sd1["n"])):
            strength_c = 0.5 if text_c is c else 1.0
            total = direct(net, x, t, text_c) * strength_c
            total = total + padded(direct(net, x[..., :20], t, text_a) * weight_a, 0, 0)
            total = total + padded(direct(net, x[..., 12:], t, text_b) * weight_b, 0, 12)
            count = 1e-37 + strength_c + padded(weight_a.expand(1, 4, H, 20), 0, 0) + padded(
                weight_b.expand(1, 4, H, 20), 0, 12)
            sides.append(total / count)
        cond, uncond = sides
        reference = uncond + 5.0 * (cond - uncond)
        base_only = direct(net, x, t, c)
    diff = float((ours - reference).abs().max())
    print(f"two areas + base, cfg 5: max |ours - ComfyUI formula| = {diff:.3g}")
    assert diff < 5e-5  # batched vs separate UNet calls, amplified by cfg
    assert float((cond - base_only).abs().max()) > 1e-3  # the areas matter


def test_area_percentage_is_resolved_on_the_latent_size(sd1) -> None:
    """("percentage", h, w, y, x) becomes (max(1, round(h * H)), max(1, round(w * W)), round(y * H), round(x * W)):
    width 0.5 at x 0.25 of a 32-wide latent is columns 8-23, feathered on both inner edges."""
    p = node(ConditioningSetAreaPercentage, conditioning=sd1["a"], width=0.5, height=1.0, x=0.25, y=0.0,
             strength=1.0)
    positive = p + sd1["b"]
    x, t = latent(2), torch.tensor(300.0)
    with sd1["model"].use() as net, torch.no_grad():
        ours = guided(net, x, t, positive, [], 1.0, sd1["model"].denoiser())
        weight = (left_fade(16) * right_fade(16)).expand(H, 16)
        total = padded(direct(net, x[..., 8:24], t, sd1["a"]) * weight, 0, 8) + direct(net, x, t, sd1["b"])
        reference = total / (1e-37 + 1.0 + padded(weight.expand(1, 4, H, 16), 0, 8))
    diff = float((ours - reference).abs().max())
    print(f"area percentage: max diff = {diff:.3g}")
    assert diff < 1e-5


def test_mask_weights_each_pixel(sd1) -> None:
    """A mask at latent size weights A's full-latent output per pixel (times the node's strength) against B."""
    mask = torch.rand(1, H, W, generator=torch.Generator().manual_seed(3))
    masked = node(ConditioningSetMask, conditioning=sd1["a"], mask=mask, strength=0.7, set_cond_area="default")
    x, t = latent(4), torch.tensor(400.0)
    with sd1["model"].use() as net, torch.no_grad():
        ours = guided(net, x, t, masked + sd1["b"], [], 1.0, sd1["model"].denoiser())
        weight = (mask * 0.7).unsqueeze(1).expand(1, 4, H, W)
        reference = (direct(net, x, t, sd1["a"]) * weight + direct(net, x, t, sd1["b"])) / (1e-37 + weight + 1.0)
    diff = float((ours - reference).abs().max())
    print(f"mask: max diff = {diff:.3g}")
    assert diff < 1e-5


def test_mask_bounds_run_the_model_on_the_mask_box(sd1) -> None:
    """"mask bounds": the model runs on the bounding box of the mask's nonzero pixels (here columns 4-15, all rows)
    and the mask weights that crop; the mask is given at image size and resized bilinearly to the latent."""
    small = torch.zeros(1, H, W)
    small[:, :, 4:16] = torch.linspace(0.2, 1.0, 12)
    image_mask = small.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # 64x256, exact under resizing
    masked = node(ConditioningSetMask, conditioning=sd1["a"], mask=image_mask[0], strength=1.0,
                  set_cond_area="mask bounds")
    x, t = latent(5), torch.tensor(700.0)
    with sd1["model"].use() as net, torch.no_grad():
        ours = guided(net, x, t, masked + sd1["b"], [], 1.0, sd1["model"].denoiser())
        resized = torch.nn.functional.interpolate(image_mask.unsqueeze(1), size=(H, W), mode="bilinear",
                                                  align_corners=False)
        weight = resized[..., 4:16].expand(1, 4, H, 12)
        total = padded(direct(net, x[..., 4:16], t, sd1["a"]) * weight, 0, 4) + direct(net, x, t, sd1["b"])
        reference = total / (1e-37 + padded(weight, 0, 4) + 1.0)
    diff = float((ours - reference).abs().max())
    print(f"mask bounds: max diff = {diff:.3g}")
    assert diff < 1e-5


def comfy_percent_to_sigma(percent: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma on SD1's scaled-linear schedule, computed from the betas."""
    if percent <= 0:
        return 999999999.9
    if percent >= 1:
        return 0.0
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, dim=0)
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().numpy()
    t = (1 - percent) * 999
    low = int(np.floor(t))
    high = min(low + 1, 999)
    return float(np.exp(log_sigmas[low] * (1 - (t - low)) + log_sigmas[high] * (t - low)))


def test_timestep_range_skips_entries_outside_their_sigmas(sd1) -> None:
    """At one call: A (0 - 0.5) counts only while sigma >= percent_to_sigma(0.5), B (0.5 - 1) only below
    percent_to_sigma(0.5); the boundary sigma is ComfyUI's."""
    early = node(ConditioningSetTimestepRange, conditioning=sd1["a"], start=0.0, end=0.5)
    late = node(ConditioningSetTimestepRange, conditioning=sd1["b"], start=0.5, end=1.0)
    x, t = latent(6), torch.tensor(500.0)
    boundary = comfy_percent_to_sigma(0.5)
    seen: dict[str, float] = {}

    def percent_to_sigma(p: float) -> float:
        seen[str(p)] = comfy_percent_to_sigma(p)
        return seen[str(p)]

    with sd1["model"].use() as net, torch.no_grad():
        for sigma, expected in ((boundary * 1.01, "a"), (boundary * 0.99, "b")):
            step = GuideStep(sigma, percent_to_sigma, x, lambda out: out, lambda x0: x0)
            ours = guided(net, x, t, early + late, [], 1.0, sd1["model"].denoiser(), step)
            diff = float((ours - direct(net, x, t, sd1[expected])).abs().max())
            assert diff < 1e-5, (sigma, expected, diff)


def test_timestep_range_in_a_run_equals_the_split_run(sd1) -> None:
    """6 euler steps (timesteps 999, 799.2, 599.4, 399.6, 199.8, 0): A for the first half, B for the second. The
    boundary percent_to_sigma(0.5) lies between steps 3 and 4, so this equals 3 steps with A returning leftover
    noise, then 3 steps with B continuing without new noise."""
    early = node(ConditioningSetTimestepRange, conditioning=sd1["a"], start=0.0, end=0.5)
    late = node(ConditioningSetTimestepRange, conditioning=sd1["b"], start=0.5, end=1.0)
    common = dict(seed=7, steps=6, cfg=4.0, sampler_name="euler", scheduler_name="normal", negative=sd1["n"])
    start = {"samples": torch.zeros(1, 4, H, W)}
    ours = sample(sd1["model"], positive=early + late, latent=start, **common)["samples"]
    first = sample(sd1["model"], positive=sd1["a"], latent=start, end_step=3, force_full_denoise=False, **common)
    split = sample(sd1["model"], positive=sd1["b"], latent=first, start_step=3, add_noise=False, **common)["samples"]
    whole_b = sample(sd1["model"], positive=sd1["b"], latent=start, **common)["samples"]
    diff = float((ours - split).abs().max())
    print(f"timestep range vs split run: max diff = {diff:.3g}")
    assert diff < 2e-4
    assert float((ours - whole_b).abs().max()) > 1e-3  # the first half really used A
