"""Noise spaces: how a model's latents relate to noise, as strategies of the one denoising loop (sampling.py).

The loop is the same for every model; what differs is where the denoising happens:

- `EpsSpace`, `VSpace`, `SampleSpace`: a diffusers UNet scheduler on a discrete training schedule (alphas), the
  model predicting the noise (eps), the velocity (v) or the clean sample. Noise-level schedulers (Euler, Heun,
  LMS, ...) work on `x0 + sigma * noise`, alpha schedulers (DDIM, DPM-Solver, UniPC, LCM) on
  `sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise`; a latent with leftover noise leaves in ComfyUI's
  `x0 + sigma * noise`.
- `FlowSpace` (nodes/sd/flow.py): flow matching, `x_t = sigma * noise + (1 - sigma) * x0`.

A space is made per sampling run by the MODEL handle (`ModelHandle.noise_space`), holds that run's scheduler, and
answers, by step index: the starting latent, the model input, the clean estimate, the step, the re-noised known
latent for masks and the leftover-noise latent. Latents enter and leave in VAE space (unscaled, unshifted).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from latentgraph.nodes.sd.samplers import make_scheduler


class NoiseSpace:
    """One run's scheduler and the conversions the loop needs; subclasses fill in the space's formulas."""

    def __init__(self, scheduler: Any, latent_scale: float, latent_shift: float = 0.0) -> None:
        self.scheduler = scheduler
        self.scale = latent_scale
        self.shift = latent_shift
        self.timesteps: torch.Tensor = torch.empty(0)

    @property
    def order(self) -> int:
        """Model calls per step (2 for Heun-like schedulers): `timesteps` has `order` entries per step."""
        return int(self.scheduler.order)

    def set_timesteps(self, total: int, device: torch.device) -> None:
        self.scheduler.set_timesteps(total, device=device)
        self.timesteps = self.scheduler.timesteps

    def set_begin_index(self, begin: int) -> None:
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(begin)

    def to_model(self, samples: torch.Tensor, device: torch.device) -> torch.Tensor:
        """VAE latents to the model's scaled (and shifted) space."""
        if self.shift:
            return ((samples - self.shift) * self.scale).to(device)
        return samples.to(device) * self.scale

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """The model's space back to VAE latents, on the CPU in float32."""
        result = x.float().cpu() / self.scale
        return result + self.shift if self.shift else result

    def initial(self, x0: torch.Tensor, noise: torch.Tensor, begin: int, add_noise: bool) -> torch.Tensor:
        """The latent the loop starts from at index `begin`."""
        raise NotImplementedError

    def model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def denoised(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        """The model's estimate of the clean latent at index `i`."""
        raise NotImplementedError

    def step(self, output: torch.Tensor, i: int, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """The known latent `x0` at the noise level of index `i` in the loop's space (for noise masks)."""
        raise NotImplementedError

    def leftover(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The loop's latent at index `i` in ComfyUI's leftover-noise convention (model space)."""
        raise NotImplementedError

    def leftover_noise(self, noise: torch.Tensor, i: int) -> torch.Tensor:
        """The noise part of a leftover-noise latent at index `i` (model space), for unmasked areas."""
        raise NotImplementedError

    # ComfyUI's view of a model call, for area/timestep-range conditioning and CFG functions (sampling.GuideStep)

    def call_sigma(self, i: int) -> float:
        """ComfyUI's sigma of the model call at index `i`."""
        raise NotImplementedError

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's model_sampling.percent_to_sigma: the sigma a fraction of the schedule (0 start, 1 end) means."""
        raise NotImplementedError

    def sigma_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The loop's latent at index `i` as ComfyUI's sampler input (x0 + sigma * noise; flow: the flow latent)."""
        raise NotImplementedError

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
        """The model output whose clean estimate at index `i` is `x0` (the inverse of `denoised`)."""
        raise NotImplementedError


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if hasattr(scheduler, "noise_sampler_seed"):
        # DPMSolverSDE's Brownian tree takes a seed, not a generator; unseeded it follows torch's global RNG and
        # the same KSampler seed gives a new image each run. Seed it, as ComfyUI does, with the node's seed.
        scheduler.noise_sampler_seed = generator.initial_seed()
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs


class DiscreteSpace(NoiseSpace):
    """A diffusers UNet scheduler over a discrete training schedule; subclasses say what the model predicts."""

    def __init__(self, sampler_name: str, scheduler_name: str, scheduler_config: dict[str, Any],
                 latent_scale: float) -> None:
        super().__init__(make_scheduler(sampler_name, scheduler_name, scheduler_config), latent_scale)
        self._kwargs: dict[str, Any] | None = None

    def set_timesteps(self, total: int, device: torch.device) -> None:
        super().set_timesteps(total, device)
        alphas = self.scheduler.alphas_cumprod.float().cpu()
        self.log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().numpy()
        self.sigma_space = float(self.scheduler.init_noise_sigma) > 1.0

    def sigma(self, i: int) -> float:
        """The noise level of the training schedule at timestep index `i` (interpolated in log sigma)."""
        t = float(self.timesteps[i])
        return float(np.exp(np.interp(t, np.arange(len(self.log_sigmas)), self.log_sigmas)))

    def to_sigma_space(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x if self.sigma_space else x * (1 + self.sigma(i) ** 2) ** 0.5

    def from_sigma_space(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x if self.sigma_space else x / (1 + self.sigma(i) ** 2) ** 0.5

    def initial(self, x0: torch.Tensor, noise: torch.Tensor, begin: int, add_noise: bool) -> torch.Tensor:
        if not add_noise:
            return self.from_sigma_space(x0, begin)
        if begin == 0:
            return noise * self.scheduler.init_noise_sigma + self.from_sigma_space(x0, 0)
        return self.scheduler.add_noise(x0, noise, self.timesteps[begin:begin + 1])

    def model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.scheduler.scale_model_input(x, self.timesteps[i])

    def step(self, output: torch.Tensor, i: int, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self._kwargs is None:
            self._kwargs = _step_kwargs(self.scheduler, generator)
        return self.scheduler.step(output, self.timesteps[i], x, **self._kwargs).prev_sample

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, self.timesteps[i:i + 1])

    def leftover(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.to_sigma_space(x, i)

    def leftover_noise(self, noise: torch.Tensor, i: int) -> torch.Tensor:
        return noise * self.sigma(i)

    def call_sigma(self, i: int) -> float:
        return self.sigma(i)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = (1.0 - percent) * (len(self.log_sigmas) - 1)
        return float(np.exp(np.interp(t, np.arange(len(self.log_sigmas)), self.log_sigmas)))

    def sigma_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.to_sigma_space(x, i)


class EpsSpace(DiscreteSpace):
    """The model predicts the noise (SD1.x, SD2.x base, SDXL)."""

    def denoised(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        return self.to_sigma_space(x, i) - output * self.sigma(i)

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
        return (self.to_sigma_space(x, i) - x0) / self.sigma(i)


class VSpace(DiscreteSpace):
    """The model predicts the velocity (SD2.x 768-v and other v-prediction checkpoints)."""

    def denoised(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigma(i)
        return self.to_sigma_space(x, i) / (sigma**2 + 1) - output * sigma / (sigma**2 + 1) ** 0.5

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigma(i)
        return (self.to_sigma_space(x, i) / (sigma**2 + 1) - x0) * (sigma**2 + 1) ** 0.5 / sigma


class SampleSpace(DiscreteSpace):
    """The model predicts the clean sample itself."""

    def denoised(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        return output

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
        return x0


DISCRETE_SPACES: dict[str, type[DiscreteSpace]] = {"epsilon": EpsSpace, "v_prediction": VSpace,
                                                   "sample": SampleSpace}


def discrete_space(prediction_type: str) -> type[DiscreteSpace]:
    """The space of a UNet scheduler config's `prediction_type` (diffusers' names)."""
    return DISCRETE_SPACES.get(prediction_type, EpsSpace)
