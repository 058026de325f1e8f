"""ComfyUI's custom-sampling nodes: schedules as SIGMAS, samplers as SAMPLER, initial noise as NOISE, guided models
as GUIDER, and the two samplers that take them (SamplerCustom, SamplerCustomAdvanced).

Names, inputs, defaults, ranges, categories and outputs are ComfyUI's (comfy_extras/nodes_custom_sampler.py), so
that shared workflows (SDXL Turbo's official one: SDTurboScheduler + SamplerCustom) load and run unchanged. The
sampling itself is nodes/sd/custom_sampling.py; a sampler name no loop here implements is refused at validation by
KSamplerSelect's list.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Conditioning, Guider, Latent, Model, Noise, Sampler, Sigmas
from latentgraph.nodes.sd.custom_sampling import (
    Guider as GuiderValue,
)
from latentgraph.nodes.sd.custom_sampling import (
    NoiseSource,
    SamplerChoice,
    model_sampling,
    sample_custom,
)
from latentgraph.nodes.sd.k_samplers import K_SAMPLER_NAMES
from latentgraph.nodes.sd.sigmas import calculate_sigmas, exponential, karras

SEED_MAX = 0xFFFFFFFFFFFFFFFF
KSamplerName = Literal[K_SAMPLER_NAMES]  # type: ignore[valid-type]
# ComfyUI's SCHEDULER_NAMES, in its order (the first is BasicScheduler's default)
SchedulerName = Literal["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                        "linear_quadratic", "kl_optimal"]
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675  # SD1's training range, ComfyUI's defaults


class BasicScheduler(Node):
    """The noise levels of a named schedule on the model's training range."""

    CATEGORY = "sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)

    model: Model
    scheduler: SchedulerName = Input("simple")
    steps: int = Input(20, ge=1, le=10000)
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        if self.denoise <= 0.0:
            return (torch.zeros(0),)
        total = self.steps if self.denoise >= 1.0 else int(self.steps / self.denoise)
        ms, _ = model_sampling(self.model)
        return (calculate_sigmas(ms, self.scheduler, total)[-(self.steps + 1):],)


class KarrasScheduler(Node):
    """Karras et al.'s schedule: levels evenly spaced in sigma^(1/rho)."""

    CATEGORY = "sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)

    steps: int = Input(20, ge=1, le=10000)
    sigma_max: float = Input(SIGMA_MAX, ge=0.0, le=5000.0, step=0.01, round=False)
    sigma_min: float = Input(SIGMA_MIN, ge=0.0, le=5000.0, step=0.01, round=False)
    rho: float = Input(7.0, ge=0.0, le=100.0, step=0.01, round=False)

    def execute(self, ctx: RunContext) -> tuple:
        return (karras(self.steps, self.sigma_min, self.sigma_max, self.rho),)


class ExponentialScheduler(Node):
    """Levels evenly spaced in log sigma."""

    CATEGORY = "sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)

    steps: int = Input(20, ge=1, le=10000)
    sigma_max: float = Input(SIGMA_MAX, ge=0.0, le=5000.0, step=0.01, round=False)
    sigma_min: float = Input(SIGMA_MIN, ge=0.0, le=5000.0, step=0.01, round=False)

    def execute(self, ctx: RunContext) -> tuple:
        return (exponential(self.steps, self.sigma_min, self.sigma_max),)


class SDTurboScheduler(Node):
    """SD/SDXL Turbo's few-step schedule: timesteps 999, 899, ... from where `denoise` starts."""

    CATEGORY = "sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)

    model: Model
    steps: int = Input(1, ge=1, le=10)
    denoise: float = Input(1.0, ge=0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        start = 10 - int(10 * self.denoise)
        timesteps = [999 - 100 * i for i in range(10)][start:start + self.steps]
        ms, _ = model_sampling(self.model)
        return (torch.tensor([ms.sigma(t) for t in timesteps] + [0.0], dtype=torch.float32),)


class SplitSigmas(Node):
    """Splits a schedule at a step: the high levels up to it and the low levels from it (sharing that level)."""

    CATEGORY = "sampling/sigmas"
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")

    sigmas: Sigmas
    step: int = Input(0, ge=0, le=10000)

    def execute(self, ctx: RunContext) -> tuple:
        return self.sigmas[:self.step + 1], self.sigmas[self.step:]


class SplitSigmasDenoise(Node):
    """Splits a schedule so that the low part holds the last `denoise` fraction of its steps."""

    CATEGORY = "sampling/sigmas"
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")

    sigmas: Sigmas
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        steps = max(self.sigmas.shape[-1] - 1, 0)
        low = round(steps * self.denoise)
        # ComfyUI's slicing: with nothing to keep for the low part, `[:-0]` leaves the high part empty
        return self.sigmas[:-low], self.sigmas[-(low + 1):]


class FlipSigmas(Node):
    """Reverses a schedule (for unsampling); a first level of 0 becomes 0.0001."""

    CATEGORY = "sampling/sigmas"
    RETURN_TYPES = ("SIGMAS",)

    sigmas: Sigmas

    def execute(self, ctx: RunContext) -> tuple:
        if len(self.sigmas) == 0:
            return (self.sigmas,)
        sigmas = self.sigmas.flip(0).clone()
        if sigmas[0] == 0:
            sigmas[0] = 0.0001
        return (sigmas,)


class SetFirstSigma(Node):
    """Replaces a schedule's first level (a copy: the incoming schedule may be cached and shared), e.g. to start
    from the very high level a depth-estimation model (Lotus) is trained at."""

    CATEGORY = "sampling/sigmas"
    RETURN_TYPES = ("SIGMAS",)

    sigmas: Sigmas
    sigma: float = Input(136.0, ge=0.0, le=20000.0, step=0.001, round=False)

    def execute(self, ctx: RunContext) -> tuple:
        sigmas = self.sigmas.clone()
        sigmas[0] = self.sigma
        return (sigmas,)


class KSamplerSelect(Node):
    """A sampler by name, for SamplerCustom and SamplerCustomAdvanced."""

    CATEGORY = "sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)

    sampler_name: KSamplerName = Input("euler")

    def execute(self, ctx: RunContext) -> tuple:
        return (SamplerChoice(self.sampler_name),)


class SamplerEulerAncestral(Node):
    """Euler ancestral with its noise amount (eta) and scale (s_noise)."""

    CATEGORY = "sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)

    eta: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)
    s_noise: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)

    def execute(self, ctx: RunContext) -> tuple:
        return (SamplerChoice("euler_ancestral", (("eta", self.eta), ("s_noise", self.s_noise))),)


class SamplerDPMPP_2M_SDE(Node):  # noqa: N801 - ComfyUI's class name
    """DPM-Solver++(2M) SDE with its solver type, eta and s_noise (both noise devices draw the same CPU tree)."""

    CATEGORY = "sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)

    solver_type: Literal["midpoint", "heun"] = Input("midpoint")
    eta: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)
    s_noise: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)
    noise_device: Literal["gpu", "cpu"] = Input("gpu")

    def execute(self, ctx: RunContext) -> tuple:
        return (SamplerChoice("dpmpp_2m_sde", (("eta", self.eta), ("s_noise", self.s_noise),
                                               ("solver_type", self.solver_type))),)


class SamplerDPMPP_SDE(Node):  # noqa: N801 - ComfyUI's class name
    """DPM-Solver++ SDE with eta, s_noise and the midpoint ratio r."""

    CATEGORY = "sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)

    eta: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)
    s_noise: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)
    r: float = Input(0.5, ge=0.0, le=100.0, step=0.01, round=False)
    noise_device: Literal["gpu", "cpu"] = Input("gpu")

    def execute(self, ctx: RunContext) -> tuple:
        return (SamplerChoice("dpmpp_sde", (("eta", self.eta), ("s_noise", self.s_noise), ("r", self.r))),)


class RandomNoise(Node):
    """The initial noise of ComfyUI's samplers for a seed (per image of a batch as its batch_index says)."""

    CATEGORY = "sampling/noise"
    RETURN_TYPES = ("NOISE",)

    noise_seed: int = Input(0, ge=0, le=SEED_MAX, control_after_generate=True)

    def execute(self, ctx: RunContext) -> tuple:
        return (NoiseSource(self.noise_seed),)


class DisableNoise(Node):
    """No initial noise: the latent is sampled as it is (to continue from leftover noise)."""

    CATEGORY = "sampling/noise"
    RETURN_TYPES = ("NOISE",)

    def execute(self, ctx: RunContext) -> tuple:
        return (NoiseSource(0, enabled=False),)


class CFGGuider(Node):
    """The model guided by positive and negative conditioning with classifier-free guidance."""

    CATEGORY = "sampling/guiders"
    DISPLAY_NAME = "CFG Guider"
    RETURN_TYPES = ("GUIDER",)

    model: Model
    positive: Conditioning
    negative: Conditioning
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (GuiderValue(self.model, self.positive, self.negative, self.cfg),)


class BasicGuider(Node):
    """The model conditioned by one conditioning, without guidance (distilled models: Turbo, Flux)."""

    CATEGORY = "sampling/guiders"
    DISPLAY_NAME = "Basic Guider"
    RETURN_TYPES = ("GUIDER",)

    model: Model
    conditioning: Conditioning

    def execute(self, ctx: RunContext) -> tuple:
        return (GuiderValue(self.model, self.conditioning, []),)


class DualCFGGuider(Node):
    """Guidance by two conditionings against a negative: `cfg_conds` between cond1 and cond2, `cfg_cond2_negative`
    between cond2 and the negative (`nested`: the cond1/cond2 guidance is guided against the negative)."""

    CATEGORY = "sampling/guiders"
    DISPLAY_NAME = "Dual CFG Guider"
    RETURN_TYPES = ("GUIDER",)

    model: Model
    cond1: Conditioning
    cond2: Conditioning
    negative: Conditioning
    cfg_conds: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    cfg_cond2_negative: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    style: Literal["regular", "nested"] = Input("regular")

    def execute(self, ctx: RunContext) -> tuple:
        return (GuiderValue(self.model, self.cond1, self.negative, self.cfg_conds, middle=self.cond2,
                            cfg_negative=self.cfg_cond2_negative, nested=self.style == "nested"),)


def _sample(ctx: RunContext, guider: GuiderValue, sampler: Any, sigmas: torch.Tensor, noise: NoiseSource,
            latent: dict[str, Any]) -> tuple:
    return sample_custom(guider, sampler, sigmas, noise, latent, ctx.progress, ctx.preview, ctx.check_interrupt)


class SamplerCustom(Node):
    """Samples a latent with a chosen sampler over given noise levels, guided by CFG."""

    CATEGORY = "sampling/custom_sampling"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")

    model: Model
    add_noise: bool = Input(True)
    noise_seed: int = Input(0, ge=0, le=SEED_MAX, control_after_generate=True)
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    positive: Conditioning
    negative: Conditioning
    sampler: Sampler
    sigmas: Sigmas
    latent_image: Latent

    def execute(self, ctx: RunContext) -> tuple:
        guider = GuiderValue(self.model, self.positive, self.negative, self.cfg)
        return _sample(ctx, guider, self.sampler, self.sigmas, NoiseSource(self.noise_seed, self.add_noise),
                       self.latent_image)


class SamplerCustomAdvanced(Node):
    """Samples a latent from a noise source, a guider, a sampler and noise levels."""

    CATEGORY = "sampling/custom_sampling"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")

    noise: Noise
    guider: Guider
    sampler: Sampler
    sigmas: Sigmas
    latent_image: Latent

    def execute(self, ctx: RunContext) -> tuple:
        return _sample(ctx, self.guider, self.sampler, self.sigmas, self.noise, self.latent_image)
