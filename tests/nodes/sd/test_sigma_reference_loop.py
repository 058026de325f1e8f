"""KSampler's sigma-loop pairs against ComfyUI's schedules, computed here from the published formulas.

test_sigma_reference.py covers the 99 pairs a diffusers scheduler runs. KSampler accepts 197 more: ComfyUI's
other sampler names (ipndm, dpmpp_2s_ancestral, euler_cfg_pp, ...) with all nine schedules, and the diffusers
names with linear_quadratic and kl_optimal; these run on the sigma loop, whose schedule `ksampler_sigmas` builds
from the tiny SD1 checkpoint's MODEL. The reference is ComfyUI's KSampler arithmetic written out again here
(comfy/samplers.py KSampler.calculate_sigmas and set_steps): dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 get a
schedule one step longer with its next-to-last level dropped, and a denoise below 1 takes the last steps + 1
levels of an int(steps / denoise)-step schedule. Every pair must agree to float32 precision: no sigma-loop pair
differs from ComfyUI on purpose.

`python bench/sigma_reference.py` prints this comparison next to the diffusers pairs'.
"""

from __future__ import annotations

import math

import pytest
import torch
from latentgraph.nodes.sd.custom_sampling import ksampler_sigmas, model_sampling
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.samplers import KSAMPLER_NAMES, KSCHEDULER_NAMES, combination_error, uses_sigma_loop
from latentgraph.nodes.sd.sigmas import ModelSampling

from tests.nodes.sd import test_sigma_reference as ref
from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.sd_helpers import run_context

EXACT = 2e-5  # relative; float32 levels against float64 formulas
DENOISE = (1.0, 0.6)
# ComfyUI's DISCARD_PENULTIMATE_SIGMA_SAMPLERS, copied from comfy/samplers.py.
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

LOOP_PAIRS = [(sampler, scheduler) for sampler in KSAMPLER_NAMES for scheduler in KSCHEDULER_NAMES
              if combination_error(sampler, scheduler) is None and uses_sigma_loop(sampler, scheduler)]


def linear_quadratic(n: int, threshold: float = 0.025) -> list[float]:
    """comfy/samplers.py linear_quadratic_schedule (Genmo's Mochi): linear to `threshold` over the first half of
    the steps, then a quadratic that meets it with matching slope and reaches 1, as 1 - t times sigma_max."""
    if n == 1:
        return [ref.SIGMA_MAX, 0.0]
    lin = n // 2
    t = [i * threshold / lin for i in range(lin)]
    quad = n - lin
    step_diff = lin - threshold * n
    a = step_diff / (lin * quad ** 2)
    b = threshold / lin - 2 * step_diff / quad ** 2
    c = a * lin ** 2
    t += [a * i * i + b * i + c for i in range(lin, n)] + [1.0]
    return [(1.0 - x) * ref.SIGMA_MAX for x in t]


def kl_optimal(n: int) -> list[float]:
    """comfy/samplers.py kl_optimal_scheduler: evenly spaced in arctan(sigma), from sigma_max to sigma_min."""
    lo, hi = math.atan(ref.SIGMA_MIN), math.atan(ref.SIGMA_MAX)
    return [math.tan(i / (n - 1) * lo + (1 - i / (n - 1)) * hi) for i in range(n)] + [0.0]


SCHEDULE = {**ref.REFERENCE, "linear_quadratic": linear_quadratic, "kl_optimal": kl_optimal}


def comfyui_ksampler_sigmas(sampler: str, scheduler: str, steps: int, denoise: float) -> list[float]:
    """ComfyUI's KSampler.set_steps / calculate_sigmas over the reference schedules."""
    def calculate(n: int) -> list[float]:
        if sampler in DISCARD_PENULTIMATE:
            levels = SCHEDULE[scheduler](n + 1)
            return levels[:-2] + levels[-1:]
        return SCHEDULE[scheduler](n)

    if denoise > 0.9999:
        return calculate(steps)
    return calculate(int(steps / denoise))[-(steps + 1):]


def max_difference(ms: ModelSampling, sampler: str, scheduler: str) -> tuple[float, list[tuple[int, float]]]:
    """(max relative difference over STEPS x DENOISE, the (steps, denoise) whose level counts differ)."""
    worst, other_lengths = 0.0, []
    for n in ref.STEPS:
        for denoise in DENOISE:
            ours = ksampler_sigmas(ms, sampler, scheduler, n, denoise).double()
            theirs = torch.tensor(comfyui_ksampler_sigmas(sampler, scheduler, n, denoise), dtype=torch.float64)
            if len(ours) != len(theirs):
                other_lengths.append((n, denoise))
                continue
            # the final 0 compares absolutely, every other level relatively
            worst = max(worst, float(((ours - theirs).abs() / theirs.clamp(min=1.0)).max()))
    return worst, other_lengths


@pytest.fixture(scope="module")
def tiny_sampling(shared_executor) -> ModelSampling:
    """The tiny SD1 checkpoint's model sampling, as KSampler's sigma loop reads it from the MODEL."""
    model = CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))[0]
    return model_sampling(model)[0]


def test_every_accepted_loop_pair_is_compared() -> None:
    """296 pairs in all: 99 diffusers ones (test_sigma_reference.py) and these."""
    assert len(LOOP_PAIRS) == 197
    assert len(LOOP_PAIRS) + len(ref.PAIRS) == 296
    assert not set(LOOP_PAIRS) & set(ref.PAIRS)


def test_reference_on_hand_checked_values() -> None:
    """The reference's new parts on values worked out by hand."""
    # linear_quadratic, 4 steps: t = 0, 0.0125 (linear), then 0.2375 i^2 - 0.9375 i + 0.95 at i = 2, 3, then 1
    t = [0.0, 0.0125, 0.025, 0.275, 1.0]
    assert linear_quadratic(4) == pytest.approx([(1 - x) * ref.SIGMA_MAX for x in t])
    assert kl_optimal(3)[1] == pytest.approx(math.tan((math.atan(ref.SIGMA_MIN) + math.atan(ref.SIGMA_MAX)) / 2))
    # dpm_2 on karras, 2 steps: a 3-step schedule without its third level
    assert comfyui_ksampler_sigmas("dpm_2", "karras", 2, 1.0) == pytest.approx(
        [ref.karras(3)[0], ref.karras(3)[1], 0.0])
    # denoise 0.5 of 2 steps: the last 3 levels of a 4-step schedule
    assert comfyui_ksampler_sigmas("euler", "normal", 2, 0.5) == pytest.approx(ref.normal(4)[-3:])


def test_tiny_model_has_sd1_training_schedule(tiny_sampling: ModelSampling) -> None:
    assert float(tiny_sampling.sigma_min) == pytest.approx(ref.SIGMA_MIN, rel=1e-6)
    assert float(tiny_sampling.sigma_max) == pytest.approx(ref.SIGMA_MAX, rel=1e-6)


@pytest.mark.parametrize(("sampler", "scheduler"), LOOP_PAIRS)
def test_loop_pair_levels_equal_comfyui(tiny_sampling: ModelSampling, sampler: str, scheduler: str) -> None:
    worst, other_lengths = max_difference(tiny_sampling, sampler, scheduler)
    assert other_lengths == []
    assert worst <= EXACT, f"{sampler}/{scheduler}: levels differ from ComfyUI's by {worst:.2e}"
