"""Custom sampling: ComfyUI's schedules, the k-samplers over explicit sigmas, and the SamplerCustom family of nodes.

References, all computed here and not by the code under test:
- schedules: ComfyUI's formulas as tests/nodes/sd/test_sigma_reference.py writes them (SD1's training schedule),
  plus linear_quadratic and kl_optimal written below from comfy/samplers.py's definitions;
- samplers: a Gaussian data distribution N(MU, S^2), whose exact denoiser is linear and whose probability-flow ODE
  has the closed-form solution x(sigma) = MU + sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_0^2) (x_0 - MU). The ODE
  samplers must land on it; the stochastic ones must sample N(MU, S^2) and forget their start; a few of the new
  samplers are also re-implemented below from their papers' update rules and must agree to float64 precision;
- nodes: KSampler on the tiny SD1 model (same seed and cfg), and the same run split in two by SplitSigmas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd import k_samplers as K
from latentgraph.nodes.sd.custom_sampling_nodes import (
    BasicGuider,
    BasicScheduler,
    CFGGuider,
    DisableNoise,
    DualCFGGuider,
    FlipSigmas,
    KarrasScheduler,
    KSamplerSelect,
    RandomNoise,
    SamplerCustom,
    SamplerCustomAdvanced,
    SDTurboScheduler,
    SetFirstSigma,
    SplitSigmas,
    SplitSigmasDenoise,
)
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sampler_nodes import KSampler
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.sdxl import save_sdxl_single_file
from latentgraph.nodes.sd.sigmas import DiscreteSampling, FlowSampling, calculate_sigmas, karras
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

from tests.nodes.sd import test_sigma_reference as ref
from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.families_tiny import tiny_sd3, tiny_sdxl
from tests.nodes.sd.sd_helpers import run_context, txt2img

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:Should have ta>=t0")]

MU, S = 0.3, 0.5
SD1 = DiscreteSampling.from_betas(torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)


# ---------------------------------------------------------------------------------------------------------------
# schedules


def linear_quadratic_reference(n: int, sigma_max: float, threshold: float = 0.025) -> list[float]:
    if n == 1:
        return [sigma_max, 0.0]
    lin = n // 2
    levels = [i * threshold / lin for i in range(lin)]
    diff = lin - threshold * n
    quad = n - lin
    a = diff / (lin * quad**2)
    b = threshold / lin - 2 * diff / quad**2
    c = a * lin**2
    levels += [a * i * i + b * i + c for i in range(lin, n)] + [1.0]
    return [(1.0 - v) * sigma_max for v in levels]


def kl_optimal_reference(n: int, lo: float, hi: float) -> list[float]:
    return [math.tan(i / (n - 1) * math.atan(lo) + (1 - i / (n - 1)) * math.atan(hi)) for i in range(n)] + [0.0]


@pytest.mark.parametrize("scheduler", [*ref.REFERENCE, "linear_quadratic", "kl_optimal"])
def test_schedules_are_comfyuis(scheduler: str) -> None:
    for n in ref.STEPS:
        ours = calculate_sigmas(SD1, scheduler, n).double()
        if scheduler == "linear_quadratic":
            theirs = linear_quadratic_reference(n, ref.SIGMA_MAX)
        elif scheduler == "kl_optimal":
            theirs = kl_optimal_reference(n, ref.SIGMA_MIN, ref.SIGMA_MAX)
        else:
            theirs = ref.REFERENCE[scheduler](n)
        assert len(ours) == len(theirs), (scheduler, n)
        theirs_t = torch.tensor(theirs, dtype=torch.float64)
        assert float(((ours - theirs_t).abs() / theirs_t.clamp(min=1e-3)).max()) < 2e-5, (scheduler, n)


def test_flow_schedule_is_the_shifted_time() -> None:
    """SD3's "simple" levels are shift t / (1 + (shift - 1) t) at t = 1, 1 - 1/n, ... (ModelSamplingDiscreteFlow)."""
    sigmas = calculate_sigmas(FlowSampling(3.0), "simple", 4)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert torch.allclose(sigmas, torch.cat([3 * t / (1 + 2 * t), torch.zeros(1)]), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# samplers on a Gaussian toy


class Toy:
    """The exact denoiser of N(MU, S^2) data (and, for CFG++, of an unconditional N(uncond_mu, S^2) with CFG)."""

    def __init__(self, flow: bool = False, cfg: float = 1.0, uncond_mu: float = MU) -> None:
        self.flow, self.cfg, self.uncond_mu = flow, cfg, uncond_mu
        self.uncond_denoised: torch.Tensor | None = None

    def exact(self, x: torch.Tensor, s: float, mu: float) -> torch.Tensor:
        if self.flow:
            a = 1 - s
            return mu + a * S * S / (a * a * S * S + s * s) * (x - a * mu)
        return mu + S * S / (S * S + s * s) * (x - mu)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        cond, uncond = self.exact(x, s, MU), self.exact(x, s, self.uncond_mu)
        self.uncond_denoised = uncond
        return uncond + self.cfg * (cond - uncond)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        return s * noise + (1 - s) * latent if self.flow else latent + s * noise

    def percent_to_sigma(self, percent: float) -> float:
        return FlowSampling(3.0).percent_to_sigma(percent)


def _ignore(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    pass


ODE = {"euler": 0.06, "heun": 4e-3, "heunpp2": 0.05, "dpm_2": 2.5e-3, "lms": 1e-3, "dpm_fast": 5e-3,
       "dpm_adaptive": 0.08, "dpmpp_2m": 3e-3, "ipndm": 1.5e-3, "ipndm_v": 6e-4, "res_multistep": 5e-3,
       "gradient_estimation": 0.05, "ddim": 0.06, "euler_cfg_pp": 0.06, "dpmpp_2m_cfg_pp": 3e-3}


@pytest.mark.parametrize("name", sorted(ODE))
def test_ode_samplers_follow_the_exact_flow(name: str) -> None:
    """40 Karras levels from 10 down to 0.1: the result must be the ODE's closed-form solution (tolerances are
    about twice the measured error, so an order lost shows)."""
    sigmas = karras(40, 0.1, 10.0).double()[:-1]
    x = torch.linspace(-30, 30, 101, dtype=torch.float64)
    exact = MU + math.sqrt(S * S + 0.01) / math.sqrt(S * S + 100.0) * (x - MU)
    function, options = K.K_SAMPLERS[name]
    out = function(Toy(), x.clone(), sigmas, _ignore, 0, **options)
    assert float((out - exact).abs().max()) < ODE[name]


STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu",
              "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
              "res_multistep_ancestral", "euler_ancestral_cfg_pp"]
# ComfyUI writes these in variance-exploding terms only (no flow form), so on flow models they are not samplers of
# the data distribution there either; DDPM is defined on a variance-preserving schedule.
NOT_FOR_FLOW = {"res_multistep_ancestral", "ddpm"}


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_sample_the_data_distribution(name: str, flow: bool) -> None:
    """From pure noise over 100 levels, 20000 samples must have the data's mean and spread, and (unlike an ODE
    sampler's) depend only weakly on where they started."""
    if flow and name in NOT_FOR_FLOW:
        pytest.skip("variance-exploding formula only, as in ComfyUI")
    torch.manual_seed(0)
    if flow:
        sigmas = calculate_sigmas(FlowSampling(3.0), "simple", 100).double()
        start = torch.randn(20000, dtype=torch.float64)
    else:
        sigmas = karras(100, 0.03, 20.0).double()
        start = MU + math.sqrt(S * S + 400.0) * torch.randn(20000, dtype=torch.float64)
    function, options = K.K_SAMPLERS[name]
    out = function(Toy(flow), start.clone(), sigmas, _ignore, 7, **options)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - S) < 0.04
    assert float(torch.corrcoef(torch.stack([start, out]))[0, 1]) < 0.9
    again = function(Toy(flow), start.clone(), sigmas, _ignore, 7, **options)
    other = function(Toy(flow), start.clone(), sigmas, _ignore, 8, **options)
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_ode_sampler_remembers_its_start() -> None:
    """The counterpart of the check above: without fresh noise the result is a function of the start."""
    torch.manual_seed(0)
    start = MU + math.sqrt(S * S + 400.0) * torch.randn(20000, dtype=torch.float64)
    out = K.sample_dpmpp_2m(Toy(), start.clone(), karras(100, 0.03, 20.0).double(), _ignore, 7)
    assert float(torch.corrcoef(torch.stack([start, out]))[0, 1]) > 0.999


# Independent re-implementations of published update rules, in numpy float64.


def _ref_dpmpp_2s(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2S) (Lu et al. 2022, alg. 1) in t = -log sigma, midpoint r = 1/2, no noise (eta 0)."""
    toy = Toy()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = toy.exact(torch.from_numpy(x), s, MU).numpy()
        if s_next == 0:
            x = d
            continue
        h = math.log(s) - math.log(s_next)
        s_mid = math.exp(-(-math.log(s) + h / 2))
        u = (s_mid / s) * x + (1 - math.exp(-h / 2)) * d
        d2 = toy.exact(torch.from_numpy(u), s_mid, MU).numpy()
        x = (s_next / s) * x + (1 - math.exp(-h)) * d2
    return x


def _ref_ipndm(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """iPNDM: Adams-Bashforth of order up to 4 on dx/dsigma."""
    toy, ds = Toy(), []
    ab = [[1], [3 / 2, -1 / 2], [23 / 12, -4 / 3, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -3 / 8]]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = toy.exact(torch.from_numpy(x), s, MU).numpy()
        if s_next == 0:  # the last step lands on the clean estimate, as ComfyUI's sample_ipndm does
            x = denoised
            continue
        d = (x - denoised) / s
        ds.insert(0, d)
        weights = ab[min(len(ds), 4) - 1]
        x = x + (s_next - s) * sum(w * v for w, v in zip(weights, ds))
    return x


def _ref_res_multistep(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """RES 2nd-order multistep (Zhang et al. 2023, arXiv 2308.02157) with phi functions, eta 0."""
    toy, prev, prev_sigma = Toy(), None, None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = toy.exact(torch.from_numpy(x), s, MU).numpy()
        if prev is None or s_next == 0:  # Euler on the first step and onto sigma 0
            x = x + (x - d) / s * (s_next - s)
        else:
            h = math.log(s) - math.log(s_next)
            c2 = (math.log(prev_sigma) - math.log(sigmas[i - 1])) / h  # the previous step's length, relative
            phi1 = (1 - math.exp(-h)) / h
            phi2 = (phi1 - 1) / -h
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * d + (phi2 / c2) * prev)
        prev, prev_sigma = d, s_next
    return x


def _ref_euler_cfg_pp(x: np.ndarray, sigmas: np.ndarray, cfg: float, uncond_mu: float) -> np.ndarray:
    """CFG++ (Chung et al. 2024) Euler: step from the guided estimate along the unconditional noise."""
    toy = Toy()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        cond = toy.exact(torch.from_numpy(x), s, MU).numpy()
        uncond = toy.exact(torch.from_numpy(x), s, uncond_mu).numpy()
        guided = uncond + cfg * (cond - uncond)
        x = guided + s_next * (x - uncond) / s
    return x


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "ipndm", "res_multistep", "euler_cfg_pp"])
def test_new_samplers_equal_their_published_update_rules(name: str) -> None:
    sigmas = karras(12, 0.05, 14.6).double()
    x = np.linspace(-20.0, 20.0, 41)
    model = Toy(cfg=3.0, uncond_mu=-0.4) if name == "euler_cfg_pp" else Toy()
    options = {"eta": 0.0} if name == "dpmpp_2s_ancestral" else {}
    function, _ = K.K_SAMPLERS[name]
    ours = function(model, torch.from_numpy(x.copy()), sigmas, _ignore, 0, **options).numpy()
    levels = sigmas.numpy()
    theirs = {"dpmpp_2s_ancestral": lambda: _ref_dpmpp_2s(x, levels), "ipndm": lambda: _ref_ipndm(x, levels),
              "res_multistep": lambda: _ref_res_multistep(x, levels),
              "euler_cfg_pp": lambda: _ref_euler_cfg_pp(x, levels, 3.0, -0.4)}[name]()
    assert np.abs(ours - theirs).max() < 1e-9


def test_ancestral_noise_is_comfyuis_cpu_stream() -> None:
    """Euler ancestral's per-step noise comes from a CPU generator seeded with seed + 1 (ComfyUI on a CPU)."""
    sigmas = torch.tensor([10.0, 2.0, 0.0], dtype=torch.float64)
    x = torch.zeros(5, dtype=torch.float64)
    out = K.sample_euler_ancestral(Toy(), x.clone(), sigmas, _ignore, 41)
    d0 = Toy().exact(x, 10.0, MU)
    up = math.sqrt(4.0 * (100.0 - 4.0) / 100.0)
    down = math.sqrt(4.0 - up * up)
    noise = torch.randn(5, generator=torch.Generator().manual_seed(42), dtype=torch.float32).double()
    x1 = x + (x - d0) / 10.0 * (down - 10.0) + noise * up
    assert torch.allclose(out, Toy().exact(x1, 2.0, MU), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# nodes on the tiny SD1 model


@pytest.fixture(scope="module")
def sd1(shared_executor) -> tuple:
    ctx = run_context(shared_executor.env)
    model, clip, vae = CheckpointLoaderSimple(ckpt_name=TINY).execute(ctx)
    positive = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    return ctx, model, positive, negative


def _latent(channels: int = 4) -> dict:
    return {"samples": torch.zeros(1, channels, 8, 8)}


def test_sampler_custom_agrees_with_ksampler(sd1) -> None:
    """SamplerCustom(euler, BasicScheduler karras) against KSampler(euler, karras), same seed and cfg. They differ
    only where ComfyUI's conventions (which SamplerCustom follows) differ from the diffusers scheduler KSampler
    runs: the UNet gets the nearest integer timestep, not a fractional one, and the start noise is scaled by
    sqrt(1 + sigma_max^2), not sigma_max (0.14 %)."""
    ctx, model, positive, negative = sd1
    ksampler = KSampler(model=model, seed=3, steps=6, cfg=5.0, sampler_name="euler", scheduler="karras",
                        positive=positive, negative=negative, latent_image=_latent()).execute(ctx)[0]["samples"]
    sigmas = BasicScheduler(model=model, scheduler="karras", steps=6, denoise=1.0).execute(ctx)[0]
    assert torch.allclose(sigmas, torch.tensor(ref.karras(6)), rtol=1e-5)
    sampler = KSamplerSelect(sampler_name="euler").execute(ctx)[0]
    output, denoised = SamplerCustom(model=model, add_noise=True, noise_seed=3, cfg=5.0, positive=positive,
                                     negative=negative, sampler=sampler, sigmas=sigmas,
                                     latent_image=_latent()).execute(ctx)
    relative = float((output["samples"] - ksampler).abs().max() / ksampler.abs().max())
    assert relative < 5e-3
    assert torch.equal(denoised["samples"], output["samples"])  # the last step lands on its clean estimate
    other = SamplerCustom(model=model, add_noise=True, noise_seed=4, cfg=5.0, positive=positive, negative=negative,
                          sampler=sampler, sigmas=sigmas, latent_image=_latent()).execute(ctx)[0]["samples"]
    assert float((other - ksampler).abs().max() / ksampler.abs().max()) > 20 * relative


def test_guiders_and_noise_nodes_equal_sampler_custom(sd1) -> None:
    ctx, model, positive, negative = sd1
    sigmas = KarrasScheduler(steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0).execute(ctx)[0]
    sampler = KSamplerSelect(sampler_name="dpmpp_2m").execute(ctx)[0]

    def custom(cfg: float, add_noise: bool = True) -> torch.Tensor:
        return SamplerCustom(model=model, add_noise=add_noise, noise_seed=9, cfg=cfg, positive=positive,
                             negative=negative, sampler=sampler, sigmas=sigmas,
                             latent_image=_latent()).execute(ctx)[0]["samples"]

    def advanced(noise, guider) -> torch.Tensor:
        return SamplerCustomAdvanced(noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                     latent_image=_latent()).execute(ctx)[0]["samples"]

    noise = RandomNoise(noise_seed=9).execute(ctx)[0]
    cfg_guided = advanced(noise, CFGGuider(model=model, positive=positive, negative=negative, cfg=4.0).execute(ctx)[0])
    assert torch.equal(cfg_guided, custom(4.0))
    basic = advanced(noise, BasicGuider(model=model, conditioning=positive).execute(ctx)[0])
    assert torch.equal(basic, custom(1.0))
    assert not torch.equal(basic, cfg_guided)
    dual = advanced(noise, DualCFGGuider(model=model, cond1=positive, cond2=positive, negative=negative, cfg_conds=2.0,
                                         cfg_cond2_negative=4.0, style="regular").execute(ctx)[0])
    assert torch.allclose(dual, cfg_guided, rtol=1e-4, atol=1e-3)  # cond1 == cond2: plain CFG against the negative
    silent = advanced(DisableNoise().execute(ctx)[0], CFGGuider(model=model, positive=positive, negative=negative,
                                                                cfg=4.0).execute(ctx)[0])
    assert torch.equal(silent, custom(4.0, add_noise=False))
    assert not torch.equal(silent, cfg_guided)


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m"])
def test_split_sigmas_hand_off_equals_the_unsplit_run(sd1, sampler_name: str) -> None:
    """High sigmas with noise, then the low ones with DisableNoise from the first run's output: the same latent as
    one run (euler exactly; dpmpp_2m's first low step is first order again, so only close)."""
    ctx, model, positive, negative = sd1
    sigmas = BasicScheduler(model=model, scheduler="normal", steps=6, denoise=1.0).execute(ctx)[0]
    high, low = SplitSigmas(sigmas=sigmas, step=3).execute(ctx)
    assert len(high) == 4 and len(low) == 4 and high[-1] == low[0]
    guider = CFGGuider(model=model, positive=positive, negative=negative, cfg=5.0).execute(ctx)[0]
    sampler = KSamplerSelect(sampler_name=sampler_name).execute(ctx)[0]
    noise = RandomNoise(noise_seed=11).execute(ctx)[0]

    def run(noise_source, part, latent) -> dict:
        return SamplerCustomAdvanced(noise=noise_source, guider=guider, sampler=sampler, sigmas=part,
                                     latent_image=latent).execute(ctx)[0]

    whole = run(noise, sigmas, _latent())["samples"]
    halfway = run(noise, high, _latent())
    split = run(DisableNoise().execute(ctx)[0], low, halfway)["samples"]
    tolerance = 1e-4 if sampler_name == "euler" else 0.05
    assert float((split - whole).abs().max() / whole.abs().max()) < tolerance


def test_sigma_utility_nodes(sd1) -> None:
    ctx, model, _, _ = sd1
    sigmas = BasicScheduler(model=model, scheduler="simple", steps=10, denoise=0.5).execute(ctx)[0]
    full = BasicScheduler(model=model, scheduler="simple", steps=20, denoise=1.0).execute(ctx)[0]
    assert torch.equal(sigmas, full[-11:])
    high, low = SplitSigmasDenoise(sigmas=full, denoise=0.25).execute(ctx)
    assert len(low) == 6 and torch.equal(torch.cat([high, low[1:]]), full)
    flipped = FlipSigmas(sigmas=full).execute(ctx)[0]
    assert flipped[0] == 0.0001 and torch.equal(flipped[1:], full.flip(0)[1:])
    first = SetFirstSigma(sigmas=full, sigma=136.0).execute(ctx)[0]
    assert first[0] == 136.0 and torch.equal(first[1:], full[1:]) and full[0] != 136.0  # the input is left as it was
    assert len(BasicScheduler(model=model, scheduler="karras", steps=5, denoise=0.0).execute(ctx)[0]) == 0
    turbo = SDTurboScheduler(model=model, steps=2, denoise=1.0).execute(ctx)[0]
    assert torch.allclose(turbo, torch.tensor([float(ref.SIGMAS[999]), float(ref.SIGMAS[899]), 0.0]), rtol=1e-5)


COMFYUI_ONLY = ["euler_cfg_pp", "euler_ancestral_cfg_pp", "heunpp2", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                "dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", "ipndm", "ipndm_v", "res_multistep",
                "gradient_estimation"]


@pytest.mark.slow
def test_ksampler_runs_comfyuis_other_sampler_and_scheduler_names(shared_executor) -> None:
    """The names no diffusers scheduler has run through the sigma loop, from KSampler, to a finite image."""
    pairs = [(name, "karras") for name in COMFYUI_ONLY] + [("euler", "kl_optimal"), ("dpm_2", "linear_quadratic")]
    for sampler, scheduler in pairs:
        result = shared_executor.run(txt2img(TINY, steps=3, size=32, sampler=sampler, scheduler=scheduler))
        assert result.status == "success", (sampler, scheduler, result.error)


def test_unsupported_names_are_refused_at_validation(shared_executor) -> None:
    with pytest.raises(InvalidPrompt) as raised:
        shared_executor.run(txt2img(TINY, sampler="er_sde"))
    assert "dpmpp_2s_ancestral" in str(raised.value.validation.node_errors["3"])  # the supported list is named
    with pytest.raises(InvalidPrompt) as raised:
        shared_executor.run(txt2img(TINY, sampler="uni_pc", scheduler="kl_optimal"))
    assert "supported schedulers for uni_pc: normal" in str(raised.value.validation.node_errors["3"])
    workflow = turbo_workflow(TINY)  # KSamplerSelect offers the sigma loop's samplers only (no uni_pc there)
    workflow["14"]["inputs"]["sampler_name"] = "uni_pc"
    with pytest.raises(InvalidPrompt) as raised:
        shared_executor.run(workflow)
    assert "ipndm" in str(raised.value.validation.node_errors["14"])


# ---------------------------------------------------------------------------------------------------------------
# SDXL Turbo's official workflow shape, and a flow model


def turbo_workflow(ckpt: str) -> dict:
    """ComfyUI's sdxlturbo_example.json in API form: SDTurboScheduler (1 step), SamplerCustom (cfg 1,
    euler_ancestral), 512 -> here 64 pixels."""
    return {
        "20": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in the snow", "clip": ["20", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["20", 1]}},
        "14": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "22": {"class_type": "SDTurboScheduler", "inputs": {"steps": 1, "denoise": 1.0, "model": ["20", 0]}},
        "13": {"class_type": "SamplerCustom", "inputs": {
            "add_noise": True, "noise_seed": 0, "cfg": 1.0, "model": ["20", 0], "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["14", 0], "sigmas": ["22", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["20", 2]}},
        "25": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


@pytest.mark.slow
def test_sdxl_turbo_workflow_runs(registry, tmp_path: Path) -> None:
    parts = tiny_sdxl()
    save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                          tmp_path / "models" / "checkpoints" / "turbo.safetensors")
    executor = Executor(registry, make_environment(tmp_path))
    result = executor.run(turbo_workflow("turbo.safetensors"))
    assert result.status == "success", result.error
    assert len(result.outputs["25"]["images"]) == 1
    ctx = run_context(executor.env)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name="turbo.safetensors").execute(ctx)
    sigmas = SDTurboScheduler(model=model, steps=1, denoise=1.0).execute(ctx)[0]
    assert torch.allclose(sigmas, torch.tensor([ref.SIGMA_MAX, 0.0]), rtol=1e-5)
    positive = CLIPTextEncode(text="a fox", clip=clip).execute(ctx)[0]
    output, denoised = SamplerCustom(model=model, add_noise=True, noise_seed=0, cfg=1.0, positive=positive,
                                     negative=positive, sampler=KSamplerSelect(sampler_name="euler_ancestral")
                                     .execute(ctx)[0], sigmas=sigmas, latent_image=_latent()).execute(ctx)
    # one ancestral step to sigma 0 is the clean estimate itself
    assert torch.equal(output["samples"], denoised["samples"]) and bool(torch.isfinite(output["samples"]).all())


@pytest.mark.slow
def test_flow_model_hand_off_and_disable_noise(registry, tmp_path: Path) -> None:
    """On SD3 (flow matching) the output with leftover noise is x_sigma / (1 - sigma), so a DisableNoise run on
    the low sigmas continues exactly where the high ones stopped."""
    parts = tiny_sd3(t5=False)
    save_sd3_single_file(parts["transformer"], parts["vae"], {c: parts[c] for c in ("text_encoder", "text_encoder_2")},
                         tmp_path / "models" / "checkpoints" / "sd3.safetensors")
    ctx = run_context(make_environment(tmp_path))
    model, clip, _ = CheckpointLoaderSimple(ckpt_name="sd3.safetensors").execute(ctx)
    positive = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    sigmas = BasicScheduler(model=model, scheduler="simple", steps=6, denoise=1.0).execute(ctx)[0]
    # ComfyUI's "simple" picks from the model's 1000-entry table: t = (1000 - floor(k * 1000 / 6)) / 1000, shift 3
    table = [(1000 - math.floor(k * 1000 / 6)) / 1000 for k in range(6)]
    assert torch.allclose(sigmas[:-1], torch.tensor([3 * t / (1 + 2 * t) for t in table]), atol=1e-5)
    guider = CFGGuider(model=model, positive=positive, negative=negative, cfg=3.0).execute(ctx)[0]
    sampler = KSamplerSelect(sampler_name="euler").execute(ctx)[0]
    noise = RandomNoise(noise_seed=2).execute(ctx)[0]
    high, low = SplitSigmas(sigmas=sigmas, step=2).execute(ctx)

    def run(noise_source, part, latent) -> dict:
        return SamplerCustomAdvanced(noise=noise_source, guider=guider, sampler=sampler, sigmas=part,
                                     latent_image=latent).execute(ctx)[0]

    whole = run(noise, sigmas, _latent(16))["samples"]
    split = run(DisableNoise().execute(ctx)[0], low, run(noise, high, _latent(16)))["samples"]
    assert float((split - whole).abs().max() / whole.abs().max()) < 1e-4
    ksampler = KSampler(model=model, seed=2, steps=6, cfg=3.0, sampler_name="euler", scheduler="simple",
                        positive=positive, negative=negative, latent_image=_latent(16)).execute(ctx)[0]["samples"]
    # KSampler runs diffusers' flow-matching Euler, whose "simple" levels are continuous (0.9375 where ComfyUI's
    # table, used by BasicScheduler, gives 0.9378): the two agree to 1.5% of the range (measured), not bit for bit
    assert float((ksampler - whole).abs().max() / whole.abs().max()) < 3e-2
