"""Sampling over an explicit list of noise levels (SIGMAS), as ComfyUI's SamplerCustom and SamplerCustomAdvanced
run it, with a NOISE source, a GUIDER (the model, its conditioning and CFG) and a SAMPLER (a k-diffusion sampler
of nodes/sd/k_samplers.py).

The model function a sampler calls is built here, from the MODEL's own noise space (eps, v or sample prediction on
its UNet's training schedule; flow matching for SD3) as ComfyUI's model sampling sees it (nodes/sd/sigmas.py), the
family's denoiser call and the one CFG combination, `sampling.guided` (area and timestep-range conditioning, CFG
functions, ControlNets as the step loop applies them). Latents enter and leave in ComfyUI's convention, as in
nodes/sd/sampling.py. KSampler and KSamplerAdvanced use this loop (`run_ksampler`) for the sampler and scheduler
names that no diffusers scheduler runs, with ComfyUI's step arithmetic (denoise, start/end steps, leftover noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from latentgraph.nodes.sd.controlnet import controlled
from latentgraph.nodes.sd.flow import FlowSpace
from latentgraph.nodes.sd.interrupt_hooks import interrupt_checks
from latentgraph.nodes.sd.k_samplers import CFG_PP, DISCARD_PENULTIMATE_SIGMA, K_SAMPLERS
from latentgraph.nodes.sd.noise_space import DiscreteSpace, NoiseSpace, SampleSpace, VSpace
from latentgraph.nodes.sd.sampling import (
    BLOCK_CHECKS_MIN_AREA,
    Conditioning,
    Denoiser,
    GuideStep,
    SamplingRequest,
    _mask_for,
    _Previews,
    guided,
    prepare_noise,
)
from latentgraph.nodes.sd.sigmas import DiscreteSampling, FlowSampling, ModelSampling, calculate_sigmas
from PIL import Image


def model_sampling(model: Any) -> tuple[ModelSampling, NoiseSpace]:
    """ComfyUI's model sampling for a MODEL, read from the noise space its family gives (and that space, for the
    latent scale and shift)."""
    space = model.noise_space("euler", "normal")
    if isinstance(space, FlowSpace):
        return FlowSampling(shift=float(space.scheduler.config.get("shift", 3.0))), space
    if isinstance(space, DiscreteSpace):
        prediction = "v_prediction" if isinstance(space, VSpace) else "sample" if isinstance(space, SampleSpace) \
            else "epsilon"
        return DiscreteSampling.from_config(dict(space.scheduler.config), space.scheduler.alphas_cumprod,
                                            prediction), space
    raise ValueError(f"{type(space).__name__} has no noise levels (sigmas): this model cannot be sampled by the "
                     f"custom-sampling nodes; use KSampler")


def ksampler_sigmas(ms: ModelSampling, sampler: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """ComfyUI's KSampler schedule: `steps` levels (+ the final 0) from the end of a `steps / denoise` schedule;
    dpm_2 and its ancestral variant run one step more and drop the next-to-last level."""
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise > 0.9999 else int(steps / denoise)
    discard = sampler in DISCARD_PENULTIMATE_SIGMA
    sigmas = calculate_sigmas(ms, scheduler, total + 1 if discard else total)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas if denoise > 0.9999 else sigmas[-(steps + 1):]


@dataclass(frozen=True)
class NoiseSource:
    """NOISE: ComfyUI's initial noise for a latent (RandomNoise), or none (DisableNoise, seed 0). The seed also
    seeds the noise samplers draw during sampling."""

    seed: int
    enabled: bool = True

    def generate(self, latent: dict[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        if not self.enabled:
            return torch.zeros(samples.shape, dtype=torch.float32)
        return prepare_noise(samples.float(), self.seed, latent.get("batch_index"))[0]


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a k-sampler of nodes/sd/k_samplers.py by ComfyUI's name, with options (eta, s_noise, ...)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, eq=False)
class Guider:
    """GUIDER: the model and how its predictions combine. CFGGuider: positive, negative and cfg; BasicGuider:
    positive alone; DualCFGGuider: positive (cond1), `middle` (cond2) and negative, with `cfg` between cond1 and
    cond2 and `cfg_negative` between cond2 and negative, `nested` for its nested style."""

    model: Any
    positive: Conditioning
    negative: Conditioning
    cfg: float = 1.0
    middle: Conditioning | None = None
    cfg_negative: float = 1.0
    nested: bool = False

    def conditionings(self) -> tuple[Conditioning, Conditioning]:
        """(positive-side, negative-side) entries, for what the whole run prepares (ControlNets)."""
        return [*self.positive, *(self.middle or [])], list(self.negative)

    def predict(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, denoiser: Denoiser, step: GuideStep,
                cfg_function: Any) -> torch.Tensor:
        """The combined model output for the model input `x` at timestep `t`."""
        if self.middle is None:
            return guided(net, x, t, self.positive, self.negative, self.cfg, denoiser, step, cfg_function)
        if self.nested:
            text = guided(net, x, t, self.positive, self.middle, self.cfg, denoiser, step, cfg_function)
            negative = guided(net, x, t, self.negative, [], 1.0, denoiser, step)
            return negative + self.cfg_negative * (text - negative)
        base = guided(net, x, t, self.middle, self.negative, self.cfg_negative, denoiser, step, cfg_function)
        if self.cfg == 0.0:
            return base
        positive = guided(net, x, t, self.positive, [], 1.0, denoiser, step)
        middle = guided(net, x, t, self.middle, [], 1.0, denoiser, step)
        return base + self.cfg * (positive - middle)

    def unconditional(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, denoiser: Denoiser,
                      step: GuideStep) -> torch.Tensor | None:
        """The negative prediction alone (CFG++ samplers), None without a negative."""
        return guided(net, x, t, self.negative, [], 1.0, denoiser, step) if self.negative else None


class _Calls:
    """The run's model calls as a noise space would list them (timestep, sigma), for the ControlNet windows."""

    def __init__(self, ms: ModelSampling) -> None:
        self.ms = ms
        self.timesteps: list[float] = []
        self.sigmas: list[float] = []

    def record(self, t: float, sigma: float) -> None:
        if t not in self.timesteps:
            self.timesteps.append(t)
            self.sigmas.append(sigma)

    def call_sigma(self, i: int) -> float:
        return self.sigmas[i]

    def percent_to_sigma(self, percent: float) -> float:
        return self.ms.percent_to_sigma(percent)


class _ModelFunction:
    """`model(x, sigma) -> denoised` for the k-samplers: ComfyUI's KSamplerX0Inpaint around its CFG guider."""

    def __init__(self, net: torch.nn.Module, denoiser: Denoiser, guider: Guider, ms: ModelSampling,
                 latent: torch.Tensor, mask: torch.Tensor | None, inpaint_noise: torch.Tensor, want_uncond: bool,
                 calls: _Calls, check_interrupt: Callable[[], None] | None) -> None:
        self.net, self.denoiser, self.guider, self.ms = net, denoiser, guider, ms
        self.latent, self.mask, self.inpaint_noise = latent, mask, inpaint_noise
        self.want_uncond, self.calls, self.check_interrupt = want_uncond, calls, check_interrupt
        self.cfg_function = getattr(guider.model, "sampler_cfg_function", None)
        self.flow = ms.flow
        self.uncond_denoised: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.check_interrupt is not None:
            self.check_interrupt()
        s, ms = float(sigma), self.ms
        if self.mask is not None:
            x = x * self.mask + ms.noise_scaling(s, self.inpaint_noise, self.latent) * (1 - self.mask)
        timestep = ms.timestep(s)
        self.calls.record(timestep, s)
        t = torch.tensor(timestep, device=x.device, dtype=torch.float32)
        x_in = ms.model_input(x, s)
        step = GuideStep(s, ms.percent_to_sigma, x, lambda out: ms.denoised(x, out.float(), s),
                         lambda x0: ms.output_for(x, x0, s))
        denoised = ms.denoised(x, self.guider.predict(self.net, x_in, t, self.denoiser, step,
                                                      self.cfg_function).float(), s)
        if self.want_uncond:
            uncond = self.guider.unconditional(self.net, x_in, t, self.denoiser, step)
            self.uncond_denoised = None if uncond is None else ms.denoised(x, uncond.float(), s)
        if self.mask is not None:
            denoised = denoised * self.mask + self.latent * (1 - self.mask)
        return denoised

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.ms.noise_scaling(float(sigma), noise, latent)

    def percent_to_sigma(self, percent: float) -> float:
        return self.ms.percent_to_sigma(percent)


@torch.no_grad()
def sample_custom(guider: Guider, sampler: SamplerChoice, sigmas: torch.Tensor, noise: NoiseSource,
                  latent: dict[str, Any], progress: Callable[[int, int], None] | None = None,
                  preview: Callable[[Image.Image], None] | None = None,
                  check_interrupt: Callable[[], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(output, denoised_output) LATENTs as SamplerCustomAdvanced returns them: the latent after the last step
    (with leftover noise when the sigmas end above 0) and the last clean estimate."""
    if sampler.name not in K_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler.name!r}; available: {', '.join(K_SAMPLERS)}")
    samples_in = latent["samples"].float()
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    out = dict(latent)
    if len(sigmas) == 0:
        return out, out
    function, fixed = K_SAMPLERS[sampler.name]
    ms, space = model_sampling(guider.model)
    initial_noise = noise.generate(latent)
    total = len(sigmas) - 1
    previews = _Previews(preview)
    last: dict[str, torch.Tensor] = {}
    calls = _Calls(ms)
    per_block = samples_in.shape[-2] * samples_in.shape[-1] >= BLOCK_CHECKS_MIN_AREA
    positive, negative = guider.conditionings()
    with guider.model.use() as used, interrupt_checks(used, check_interrupt, per_block) as net, \
            controlled(guider.model.denoiser(), positive, negative, calls) as denoiser:
        device = net.device
        # ComfyUI leaves an all-zero (empty) latent unshifted
        x0 = space.to_model(samples_in, device) if bool(samples_in.any()) else samples_in.to(device)
        noise_d = initial_noise.to(device)
        mask = _mask_for(latent, x0.shape, device)
        inpaint_noise = noise_d
        if sampler.name == "ddim":  # ComfyUI's ddim re-noises the kept area with its own noise
            generator = torch.Generator("cpu").manual_seed(noise.seed + 1)
            inpaint_noise = torch.randn(noise_d.shape, generator=generator).to(device)
        first = float(sigmas[0])
        max_denoise = math.isclose(ms.sigma_max, first, rel_tol=1e-5) or first > ms.sigma_max
        x = ms.noise_scaling(first, noise_d, x0, max_denoise)
        model = _ModelFunction(net, denoiser, guider, ms, x0, mask, inpaint_noise, sampler.name in CFG_PP, calls,
                               check_interrupt)

        def callback(i: int, x_i: torch.Tensor, denoised: torch.Tensor) -> None:
            last["x0"] = denoised
            previews(denoised, i == 0 or i + 1 >= total)
            if progress is not None:
                progress(min(i + 1, total), total)

        result = function(model, x, sigmas.to(device), callback, noise.seed, **{**fixed, **dict(sampler.options)})
        samples = space.from_model(ms.inverse_noise_scaling(float(sigmas[-1]), result))
        denoised = space.from_model(last["x0"]) if "x0" in last else None
    out["samples"] = samples
    if denoised is None:
        return out, out
    return out, {**latent, "samples": denoised}


def run_ksampler(request: SamplingRequest) -> dict[str, Any]:
    """KSampler / KSamplerAdvanced on this loop, with ComfyUI's KSampler arithmetic: the schedule of
    `ksampler_sigmas`, cut at `end_step` (its last level set to 0 unless leftover noise is asked for), started at
    `start_step`; nothing left to run returns the latent unchanged."""
    r = request
    ms, _ = model_sampling(r.model)
    sigmas = ksampler_sigmas(ms, r.sampler_name, r.scheduler_name, r.steps, r.denoise)
    if r.end_step < len(sigmas) - 1:
        sigmas = sigmas[:r.end_step + 1].clone()
        if r.force_full_denoise:
            sigmas[-1] = 0
    if r.start_step >= len(sigmas) - 1:
        return dict(r.latent)
    sigmas = sigmas[r.start_step:]
    guider = Guider(r.model, r.positive, r.negative, r.cfg)
    output, _ = sample_custom(guider, SamplerChoice(r.sampler_name), sigmas, NoiseSource(r.seed, r.add_noise),
                              r.latent, r.progress, r.preview, r.check_interrupt)
    return output
