"""Our noise schedules against ComfyUI's scheduler formulas, written here from their published definitions.

`make_scheduler` maps ComfyUI's sampler and scheduler names onto diffusers schedulers and spacings. Checking that
mapping with the schedulers it builds proves nothing; this module computes each of ComfyUI's seven schedules
(comfy/samplers.py and k-diffusion's get_sigmas_*) from the SD1 training schedule itself, and compares, for every
accepted sampler/scheduler pair and several step counts, the noise level each step starts from and the level the
last step ends at.

Where diffusers has no way to space steps as ComfyUI does, the pair differs; `DOCUMENTED` pins each such
difference to the size stated in workflows/COMPATIBILITY.md, so that it can neither grow unnoticed nor vanish
without the document being corrected. Every other pair must agree to float32 precision.

`python -m tests.nodes.sd.test_sigma_reference` prints the table of maximum differences.
"""

from __future__ import annotations

import json
import math
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from latentgraph.nodes.sd.samplers import SAMPLER_NAMES, make_scheduler, supported_schedulers

CONFIG = json.loads((Path(__file__).parents[3] / "nodes/sd/configs/sd1/scheduler.json").read_text())
STEPS = (4, 7, 10, 25)
EXACT = 1e-4  # relative; float32 schedules agree to about 2e-5

# ComfyUI's ModelSamplingDiscrete: betas "linear" in sqrt space (SD's scaled_linear), float64 products, then
# sigmas and log sigmas kept in float32.
_BETAS = torch.linspace(CONFIG["beta_start"] ** 0.5, CONFIG["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
_ALPHAS_CUMPROD = torch.cumprod(1 - _BETAS, 0)
_SIGMAS64 = ((1 - _ALPHAS_CUMPROD) / _ALPHAS_CUMPROD) ** 0.5
SIGMAS = _SIGMAS64.float()
LOG_SIGMAS = _SIGMAS64.log().float()
SIGMA_MIN, SIGMA_MAX = float(SIGMAS[0]), float(SIGMAS[-1])


def sigma_at(t: float) -> float:
    """ModelSamplingDiscrete.sigma: log sigma interpolated linearly between integer timesteps."""
    t = min(max(float(t), 0.0), len(SIGMAS) - 1.0)
    low, high = math.floor(t), math.ceil(t)
    w = t - low
    return float(((1 - w) * LOG_SIGMAS[low] + w * LOG_SIGMAS[high]).exp())


def timestep_of(sigma: float) -> int:
    """ModelSamplingDiscrete.timestep: the training timestep whose log sigma is nearest."""
    return int((math.log(sigma) - LOG_SIGMAS.double()).abs().argmin())


def normal(n: int, sgm: bool = False) -> list[float]:
    start, end = timestep_of(SIGMA_MAX), timestep_of(SIGMA_MIN)
    if sgm:
        timesteps = torch.linspace(start, end, n + 1)[:-1]
    else:
        assert not math.isclose(sigma_at(end), 0, abs_tol=1e-5)  # SD's schedule never reaches 0: no extra step
        timesteps = torch.linspace(start, end, n)
    return [sigma_at(t) for t in timesteps] + [0.0]


def karras(n: int, rho: float = 7.0) -> list[float]:
    ramp = torch.linspace(0, 1, n)
    max_inv, min_inv = SIGMA_MAX ** (1 / rho), SIGMA_MIN ** (1 / rho)
    return ((max_inv + ramp * (min_inv - max_inv)) ** rho).tolist() + [0.0]


def exponential(n: int) -> list[float]:
    return torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n).exp().tolist() + [0.0]


def simple(n: int) -> list[float]:
    stride = len(SIGMAS) / n
    return [float(SIGMAS[-(1 + int(x * stride))]) for x in range(n)] + [0.0]


def ddim_uniform(n: int) -> list[float]:
    stride = max(len(SIGMAS) // n, 1)
    levels = [0.0] + [float(SIGMAS[x]) for x in range(1, len(SIGMAS), stride)]
    return levels[::-1]


def beta(n: int, alpha: float = 0.6, beta_: float = 0.6) -> list[float]:
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta_) * (len(SIGMAS) - 1))
    levels: list[float] = []
    last = -1.0
    for t in ts:
        if t != last:
            levels.append(float(SIGMAS[int(t)]))
        last = t
    return levels + [0.0]


REFERENCE = {"normal": normal, "karras": karras, "exponential": exponential,
             "sgm_uniform": lambda n: normal(n, sgm=True), "simple": simple, "ddim_uniform": ddim_uniform,
             "beta": beta}


@cache
def _scheduler(sampler: str, scheduler: str) -> Any:
    """One scheduler per pair, re-timed for each step count (some build a 1000-step table when created)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_scheduler(sampler, scheduler, CONFIG)


def ours(sampler: str, scheduler: str, n: int) -> list[float]:
    """The noise level each of our `n` steps starts from, then the level the last one ends at.

    Second-order schedulers list each level twice (or with a midpoint between); every `order`-th entry starts a
    step. Schedulers without noise levels (DDIM, DDPM, LCM) step between training timesteps.
    """
    s = _scheduler(sampler, scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.set_timesteps(n)
    order = s.order
    sigmas = getattr(s, "sigmas", None)
    if sigmas is not None:
        return [float(x) for x in sigmas[::order][:n]] + [float(sigmas[-1])]
    starts = [float(_SIGMAS64[int(t)]) for t in s.timesteps[:n]]
    if type(s).__name__ == "DDIMScheduler":  # its last step lands on `final_alpha_cumprod`
        return starts + [float(((1 - s.final_alpha_cumprod) / s.final_alpha_cumprod) ** 0.5)]
    return starts + [0.0]  # DDPM's last step lands on alpha 1, LCM's returns its clean estimate


def compare(sampler: str, scheduler: str) -> tuple[float, float, list[int]]:
    """(max relative difference of step starts, max absolute difference of the end level, step counts at which
    ComfyUI runs a different number of steps); step starts are compared only where the counts agree."""
    worst, worst_end, other_lengths = 0.0, 0.0, []
    for n in STEPS:
        ref, got = REFERENCE[scheduler](n), ours(sampler, scheduler, n)
        worst_end = max(worst_end, abs(got[-1] - ref[-1]))
        if len(ref) != len(got):
            other_lengths.append(n)
            continue
        worst = max(worst, max(abs(a - b) / b for a, b in zip(got[:-1], ref[:-1])))
    return worst, worst_end, other_lengths


PAIRS = [(sampler, scheduler) for sampler in SAMPLER_NAMES for scheduler in supported_schedulers(sampler)]

SIGMA_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_sde")
MULTISTEP = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "deis", "uni_pc", "uni_pc_bh2")
TIMESTEP_SAMPLERS = ("ddpm", "ddim")

# (sampler, scheduler) -> the bound on the relative difference of step starts stated in workflows/COMPATIBILITY.md.
DOCUMENTED: dict[tuple[str, str], float] = {}
for _s in SIGMA_SAMPLERS + MULTISTEP + TIMESTEP_SAMPLERS:
    DOCUMENTED[(_s, "sgm_uniform")] = 0.014  # integer timesteps where ComfyUI interpolates fractional ones
    DOCUMENTED[(_s, "simple")] = 0.005  # diffusers rounds n * 1000 / steps where ComfyUI truncates
for _s in (s for s in SIGMA_SAMPLERS + MULTISTEP if "beta" in supported_schedulers(s)):
    DOCUMENTED[(_s, "beta")] = 3.8  # diffusers spaces beta quantiles in sigma, ComfyUI in timesteps
for _s in MULTISTEP:
    DOCUMENTED[(_s, "normal")] = 23.0  # n + 1 points from 999 to 0 less the last, not n points
    DOCUMENTED[(_s, "ddim_uniform")] = 13.0  # "leading" spacing over n + 1 points, from 1000 // (n + 1) * n + 1
for _s in TIMESTEP_SAMPLERS:
    DOCUMENTED[(_s, "normal")] = 0.006  # timesteps rounded to integers
DOCUMENTED[("lcm", "normal")] = 24.0  # LCM keeps its own 50-point grid and takes n of it
DOCUMENTED[("lcm", "sgm_uniform")] = 0.09
DOCUMENTED[("lcm", "simple")] = 0.09

# Pairs whose last step ends above 0 (ComfyUI always ends at 0): the absolute end level, SD1's smallest sigma.
ENDS_ABOVE_ZERO = {("deis", s): SIGMA_MIN for s in supported_schedulers("deis")}
ENDS_ABOVE_ZERO |= {("uni_pc", s): SIGMA_MIN for s in supported_schedulers("uni_pc")}
ENDS_ABOVE_ZERO |= {("ddim", s): SIGMA_MIN for s in supported_schedulers("ddim")}


def test_every_accepted_pair_is_compared() -> None:
    assert len(PAIRS) == 99
    assert set(DOCUMENTED) <= set(PAIRS) and set(ENDS_ABOVE_ZERO) <= set(PAIRS)


def test_reference_formulas_on_hand_checked_values() -> None:
    """The reference itself, on values worked out by hand from the definitions."""
    assert SIGMA_MIN == pytest.approx(0.0292, abs=1e-4) and SIGMA_MAX == pytest.approx(14.6146, abs=1e-4)
    assert normal(4)[:4] == pytest.approx([SIGMA_MAX, float(SIGMAS[666]), float(SIGMAS[333]), SIGMA_MIN])
    assert simple(4)[:4] == [float(SIGMAS[i]) for i in (999, 749, 499, 249)]
    assert ddim_uniform(4) == [float(SIGMAS[i]) for i in (751, 501, 251, 1)] + [0.0]
    assert len(ddim_uniform(7)) == 9  # 1000 // 7 = 142 fits 8 times into 1..999: ComfyUI runs 8 steps
    assert karras(3)[1] == pytest.approx(((SIGMA_MAX ** (1 / 7) + SIGMA_MIN ** (1 / 7)) / 2) ** 7, rel=1e-6)
    assert exponential(3)[1] == pytest.approx((SIGMA_MAX * SIGMA_MIN) ** 0.5, rel=1e-6)
    assert beta(2) == pytest.approx([SIGMA_MAX, float(SIGMAS[500]), 0.0])  # ppf(0.5) of a symmetric beta
    assert sigma_at(0.5) == pytest.approx((float(SIGMAS[0]) * float(SIGMAS[1])) ** 0.5, rel=1e-6)


@pytest.mark.parametrize(("sampler", "scheduler"), PAIRS)
def test_step_levels_equal_comfyui_or_differ_as_documented(sampler: str, scheduler: str) -> None:
    worst, worst_end, other_lengths = compare(sampler, scheduler)
    bound = DOCUMENTED.get((sampler, scheduler))
    if bound is None:
        assert worst <= EXACT, f"{sampler}/{scheduler}: step levels differ from ComfyUI's by {worst:.2e}"
    else:
        assert EXACT < worst <= bound, f"{sampler}/{scheduler}: {worst:.2e}, documented {bound}; update the docs"
    assert worst_end == pytest.approx(ENDS_ABOVE_ZERO.get((sampler, scheduler), 0.0), abs=1e-6)
    # ComfyUI's ddim_uniform runs an extra step when 1000 // steps fits steps + 1 times into 1..999.
    expected_other = [n for n in STEPS if scheduler == "ddim_uniform" and len(range(1, 1000, 1000 // n)) != n]
    assert other_lengths == expected_other


def table() -> str:
    """The comparison as a text table (for the docs and the issue's closing note)."""
    lines = [f"{'sampler':16} {'scheduler':13} {'max rel diff':>12} {'end level':>9}  other step counts"]
    for sampler, scheduler in PAIRS:
        worst, worst_end, other = compare(sampler, scheduler)
        lines.append(f"{sampler:16} {scheduler:13} {worst:12.2e} {worst_end:9.4f}  {other or ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
