"""Noise levels (sigmas) as ComfyUI's samplers see them: a model's sigma table and its conversions, and the
scheduler formulas that space a run's sigmas.

ComfyUI's custom-sampling nodes (SamplerCustom and friends) drive the denoising loop by an explicit SIGMAS tensor,
so the sigma of a model call, its timestep, the input scaling and the clean estimate must be ComfyUI's:

- `DiscreteSampling` is ComfyUI's ModelSamplingDiscrete over a UNet's training schedule (eps, v or sample
  prediction): x = x0 + sigma * noise, the network sees x / sqrt(sigma^2 + 1) at the nearest training timestep.
- `FlowSampling` is ModelSamplingDiscreteFlow (SD3): x = sigma * noise + (1 - sigma) * x0, timestep = 1000 sigma.

`calculate_sigmas` gives ComfyUI's named schedules (comfy/samplers.py, k-diffusion's get_sigmas_*) on either.
Pure torch and numpy: the sampling loop (nodes/sd/custom_sampling.py) builds these from a MODEL's noise space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SIGMA_DATA = 1.0


@dataclass(frozen=True)
class DiscreteSampling:
    """ComfyUI's ModelSamplingDiscrete: a 1000-level sigma table from the training betas, and what the model
    predicts ("epsilon", "v_prediction" or "sample", diffusers' names)."""

    sigmas: torch.Tensor  # float32, one per training timestep, increasing
    prediction: str = "epsilon"
    flow = False

    @classmethod
    def from_betas(cls, betas: torch.Tensor, prediction: str = "epsilon") -> DiscreteSampling:
        """The table as ComfyUI computes it: cumulative products in float64, sigmas kept in float32."""
        alphas_cumprod = torch.cumprod(1 - betas.double(), 0)
        return cls((((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float(), prediction)

    @classmethod
    def from_config(cls, config: dict, alphas_cumprod: torch.Tensor, prediction: str) -> DiscreteSampling:
        """From a diffusers scheduler config; its betas are recomputed in float64 where the schedule is named
        (diffusers keeps float32 products), else taken from `alphas_cumprod`."""
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        schedule = config.get("beta_schedule", "scaled_linear")
        if schedule == "scaled_linear" and config.get("trained_betas") is None:
            return cls.from_betas(torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2, prediction)
        if schedule == "linear" and config.get("trained_betas") is None:
            return cls.from_betas(torch.linspace(start, end, n, dtype=torch.float64), prediction)
        acp = alphas_cumprod.double()
        return cls((((1 - acp) / acp) ** 0.5).float(), prediction)

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: float) -> float:
        """The training timestep whose log sigma is nearest (ComfyUI feeds the network integer timesteps)."""
        return float((math.log(sigma) - self.log_sigmas.double()).abs().argmin()) if sigma > 0 else 0.0

    def sigma(self, timestep: float) -> float:
        """Log sigma interpolated linearly between integer timesteps."""
        t = min(max(float(timestep), 0.0), len(self.sigmas) - 1.0)
        low, high = math.floor(t), math.ceil(t)
        w = t - low
        logs = self.log_sigmas
        return float(((1 - w) * logs[low] + w * logs[high]).exp())

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * 999.0)

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x / (sigma**2 + SIGMA_DATA**2) ** 0.5

    def denoised(self, x: torch.Tensor, output: torch.Tensor, sigma: float) -> torch.Tensor:
        """The clean estimate from the network's output at noise level `sigma` (x in sigma space)."""
        if self.prediction == "v_prediction":
            s2 = sigma**2 + SIGMA_DATA**2
            return x * SIGMA_DATA**2 / s2 - output * sigma * SIGMA_DATA / s2**0.5
        if self.prediction == "sample":
            return output
        return x - output * sigma

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        """The network output whose clean estimate is `x0` (the inverse of `denoised`)."""
        if self.prediction == "v_prediction":
            s2 = sigma**2 + SIGMA_DATA**2
            return (x * SIGMA_DATA**2 / s2 - x0) * s2**0.5 / (sigma * SIGMA_DATA)
        if self.prediction == "sample":
            return x0
        return (x - x0) / sigma

    def noise_scaling(self, sigma: float, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The starting latent: at the top of the schedule the noise is scaled by sqrt(1 + sigma^2), as ComfyUI
        (and diffusers' init_noise_sigma) does."""
        scale = (1.0 + sigma**2) ** 0.5 if max_denoise else sigma
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: float, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class FlowSampling:
    """ComfyUI's ModelSamplingDiscreteFlow: sigma(t) = shift t / (1 + (shift - 1) t) on 1000 levels, the network
    predicting the velocity noise - x0 at timestep 1000 sigma."""

    shift: float = 3.0
    multiplier: float = 1000.0
    prediction = "flow"
    flow = True

    def sigma(self, timestep: float) -> float:
        t = float(timestep) / self.multiplier
        return self.shift * t / (1 + (self.shift - 1) * t)

    @property
    def sigmas(self) -> torch.Tensor:
        t = torch.arange(1, 1001, dtype=torch.float64) / 1000 * self.multiplier
        return torch.tensor([self.sigma(float(v)) for v in t], dtype=torch.float32)

    @property
    def sigma_min(self) -> float:
        return self.sigma(self.multiplier / 1000)

    @property
    def sigma_max(self) -> float:
        return self.sigma(self.multiplier)

    def timestep(self, sigma: float) -> float:
        return sigma * self.multiplier

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * self.multiplier)

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x

    def denoised(self, x: torch.Tensor, output: torch.Tensor, sigma: float) -> torch.Tensor:
        return x - output * sigma

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - x0) / sigma

    def noise_scaling(self, sigma: float, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma: float, x: torch.Tensor) -> torch.Tensor:
        """ComfyUI returns x_sigma / (1 - sigma), so that a following sampler without added noise resumes at
        exactly x_sigma."""
        return x / (1.0 - sigma)


ModelSampling = DiscreteSampling | FlowSampling


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def _table(ms: ModelSampling) -> torch.Tensor:
    return ms.sigmas


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    table = _table(ms)
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    table = _table(ms)
    x = 1
    if math.isclose(float(table[x]), 0, abs_tol=1e-5):
        steps, levels = steps + 1, []
    else:
        levels = [0.0]
    stride = max(len(table) // steps, 1)
    while x < len(table):
        levels.append(float(table[x]))
        x += stride
    return torch.tensor(levels[::-1])


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(ms.sigma(end), 0, abs_tol=1e-5):
            steps, append_zero = steps + 1, False
        timesteps = torch.linspace(start, end, steps)
    levels = [ms.sigma(float(t)) for t in timesteps]
    return torch.tensor(levels + [0.0] if append_zero else levels)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Lee et al. (2024): timesteps at the beta(alpha, beta) distribution's quantiles."""
    import scipy.stats

    table = _table(ms)
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * (len(table) - 1))
    levels: list[float] = []
    last = -1.0
    for t in ts:
        if t != last:
            levels.append(float(table[int(t)]))
        last = t
    return torch.tensor(levels + [0.0])


def linear_quadratic(ms: ModelSampling, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Genmo's Mochi schedule: linear in the first half, quadratic after, scaled to sigma_max."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / quadratic_steps**2
        const = quadratic_coef * linear_steps**2
        quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * torch.tensor(ms.sigma_max, dtype=torch.float32)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (AUTOMATIC1111 PR 15608)."""
    idx = torch.arange(n, dtype=torch.float).div_(n - 1) if n > 1 else torch.zeros(1)
    sigmas = idx.new_zeros(n + 1)
    sigmas[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return sigmas


SCHEDULES = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta", "linear_quadratic",
             "kl_optimal")


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """ComfyUI's calculate_sigmas: `steps` + 1 noise levels of the named schedule, ending at 0 (float32, CPU)."""
    if scheduler == "karras":
        sigmas = karras(steps, ms.sigma_min, ms.sigma_max)
    elif scheduler == "exponential":
        sigmas = exponential(steps, ms.sigma_min, ms.sigma_max)
    elif scheduler == "normal":
        sigmas = normal(ms, steps)
    elif scheduler == "sgm_uniform":
        sigmas = normal(ms, steps, sgm=True)
    elif scheduler == "simple":
        sigmas = simple(ms, steps)
    elif scheduler == "ddim_uniform":
        sigmas = ddim_uniform(ms, steps)
    elif scheduler == "beta":
        sigmas = beta(ms, steps)
    elif scheduler == "linear_quadratic":
        sigmas = linear_quadratic(ms, steps)
    elif scheduler == "kl_optimal":
        sigmas = kl_optimal(steps, ms.sigma_min, ms.sigma_max)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULES)}")
    return sigmas.float()
