"""Flow matching (SD3's MMDiT) as a noise space of the one denoising loop (nodes/sd/sampling.py).

A flow model predicts the velocity v = noise - x0 along x_t = sigma * noise + (1 - sigma) * x0, sigma going from 1
to 0; ComfyUI's `ModelSamplingSD3` shift (3.0 for SD3) bends the sigma schedule towards the noisy end. With this space
the loop runs StableDiffusion3Pipeline's steps (same scheduler, seed, steps and cfg give its latents) plus what
ComfyUI adds: `denoise < 1`, start/end steps, leftover noise, noise masks, per-image noise and CFG with the
unconditional pass skipped at cfg == 1.

Latents enter and leave unscaled (VAE space). A latent returned with leftover noise at sigma is, as in ComfyUI,
x_sigma / (1 - sigma) in the model's scaled space, so that a following sampler with add_noise disabled resumes at
exactly x_sigma.
"""

from __future__ import annotations

from typing import Any

import torch
from latentgraph.nodes.sd.noise_space import NoiseSpace

FLOW_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}
# Uniform spacings all give the shifted linear sigmas of ComfyUI's "simple" for a flow model.
FLOW_SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {}, "simple": {}, "sgm_uniform": {},
    "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}
_KARRAS_LIKE = ("karras", "exponential", "beta")


def flow_combination_error(sampler: str, scheduler: str) -> str | None:
    """Why a sampler/scheduler pair cannot run on a flow-matching model, or None."""
    if sampler not in FLOW_SAMPLERS:
        return (f"sampler {sampler} is not available for flow-matching models (SD3); "
                f"use one of: {', '.join(FLOW_SAMPLERS)}")
    if scheduler not in FLOW_SCHEDULERS or (scheduler in _KARRAS_LIKE and sampler != "euler"):
        allowed = list(FLOW_SCHEDULERS) if sampler == "euler" else ["normal", "simple", "sgm_uniform"]
        return f"scheduler {scheduler} is not available with {sampler} for flow-matching models; use: " \
               f"{', '.join(allowed)}"
    return None


def make_flow_scheduler(sampler: str, scheduler: str, base_config: dict[str, Any]) -> Any:
    import diffusers
    error = flow_combination_error(sampler, scheduler)
    if error:
        raise ValueError(error)
    class_name, options = FLOW_SAMPLERS[sampler]
    shift = float(base_config.get("shift", 3.0))
    train = int(base_config.get("num_train_timesteps", 1000))
    cls = getattr(diffusers, class_name)
    if class_name.startswith("FlowMatch"):
        return cls(num_train_timesteps=train, shift=shift, **FLOW_SCHEDULERS[scheduler])
    return cls(num_train_timesteps=train, use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction",
               **options)


def _sigmas(scheduler: Any) -> torch.Tensor:
    """Noise level per entry of `scheduler.timesteps`, then the final one."""
    sigmas = scheduler.sigmas.float().cpu()
    if len(sigmas) == len(scheduler.timesteps):
        sigmas = torch.cat([sigmas, torch.zeros(1)])
    return sigmas


class FlowSpace(NoiseSpace):
    """Flow matching: the model predicts the velocity `noise - x0`; sigma runs from 1 to 0 along the schedule."""

    def __init__(self, sampler_name: str, scheduler_name: str, scheduler_config: dict[str, Any],
                 latent_scale: float, latent_shift: float) -> None:
        super().__init__(make_flow_scheduler(sampler_name, scheduler_name, scheduler_config), latent_scale,
                         latent_shift)
        self.sigmas = torch.zeros(1)
        self.flow_shift = float(scheduler_config.get("shift", 3.0))

    def set_timesteps(self, total: int, device: torch.device) -> None:
        super().set_timesteps(total, device)
        self.sigmas = _sigmas(self.scheduler)

    def initial(self, x0: torch.Tensor, noise: torch.Tensor, begin: int, add_noise: bool) -> torch.Tensor:
        sigma0 = float(self.sigmas[begin])
        return sigma0 * noise + (1 - sigma0) * x0 if add_noise else (1 - sigma0) * x0

    def denoised(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        return x.float() - float(self.sigmas[i]) * output

    def step(self, output: torch.Tensor, i: int, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.scheduler.step(output, self.timesteps[i], x).prev_sample

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        s = float(self.sigmas[i])
        return s * noise + (1 - s) * x0

    def leftover(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x_sigma / (1 - sigma), as ComfyUI returns it, so that a following sampler with add_noise disabled
        resumes at exactly x_sigma."""
        return x / (1 - float(self.sigmas[i]))

    def leftover_noise(self, noise: torch.Tensor, i: int) -> torch.Tensor:
        s = float(self.sigmas[i])
        return noise * s / (1 - s)

    def call_sigma(self, i: int) -> float:
        return float(self.sigmas[i])

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's ModelSamplingDiscreteFlow: the shifted time 1 - percent."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        t = 1.0 - percent
        return self.flow_shift * t / (1 + (self.flow_shift - 1) * t)

    def sigma_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
        return (x.float() - x0) / float(self.sigmas[i])
