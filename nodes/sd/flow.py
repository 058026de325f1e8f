"""The denoising loop for flow-matching models (SD3's MMDiT), with ComfyUI's sampling semantics.

A flow model predicts the velocity v = noise - x0 along x_t = sigma * noise + (1 - sigma) * x0, sigma going from 1
to 0; ComfyUI's `ModelSamplingSD3` shift (3.0 for SD3) bends the sigma schedule towards the noisy end. The loop is
StableDiffusion3Pipeline's (same scheduler, seed, steps and cfg give its latents) plus what ComfyUI adds, as the
UNet loop in nodes/sd/sampling.py does: `denoise < 1`, start/end steps, leftover noise, noise masks, per-image
noise and CFG with the unconditional pass skipped at cfg == 1.

Latents enter and leave unscaled (VAE space). A latent returned with leftover noise at sigma is, as in ComfyUI,
x_sigma / (1 - sigma) in the model's scaled space, so that a following sampler with add_noise disabled resumes at
exactly x_sigma.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from latentgraph.nodes.sd.sampling import Conditioning, _mask_for, guided, latent_preview, prepare_noise, step_window
from PIL import Image

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


@torch.no_grad()
def sample_flow(model: Any, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler_name: str,
                positive: Conditioning, negative: Conditioning, latent: dict[str, Any], denoise: float = 1.0,
                add_noise: bool = True, start_step: int = 0, end_step: int = 10000, force_full_denoise: bool = True,
                progress: Callable[[int, int], None] | None = None,
                preview: Callable[[Image.Image], None] | None = None,
                check_interrupt: Callable[[], None] | None = None) -> dict[str, Any]:
    """Denoises `latent` with a flow-matching MODEL (same arguments as nodes.sd.sampling.sample)."""
    samples_in = latent["samples"].float()
    out_latent = dict(latent)
    window = step_window(steps, denoise, start_step, end_step)
    if window is None:
        return out_latent
    total, first, last = window
    scheduler = make_flow_scheduler(sampler_name, scheduler_name, model.scheduler_config)
    scale, shift = model.latent_scale, model.latent_shift
    with model.use() as net:
        device = net.device
        scheduler.set_timesteps(total, device=device)
        order = scheduler.order
        timesteps, sigmas = scheduler.timesteps, _sigmas(scheduler)
        begin = first * order
        end = last * order if last < total else len(timesteps)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        x0 = ((samples_in - shift) * scale).to(device)
        noise, _ = prepare_noise(samples_in, seed, latent.get("batch_index"))
        noise = noise.to(device)
        sigma0 = float(sigmas[begin])
        x = sigma0 * noise + (1 - sigma0) * x0 if add_noise else (1 - sigma0) * x0
        mask = _mask_for(latent, x.shape, device)
        stop_early = force_full_denoise and last < total
        final_first = (last - 1) * order
        clean: torch.Tensor | None = None
        for n, i in enumerate(range(begin, end)):
            if check_interrupt is not None:
                check_interrupt()
            t = timesteps[i]
            velocity = guided(net, x, t, positive, negative, cfg, model.family)
            estimate = x.float() - float(sigmas[i]) * velocity
            if preview is not None:
                preview(latent_preview(estimate[0]))
            if stop_early and i == final_first:
                clean = estimate
                if progress is not None:
                    progress(end - begin, end - begin)
                break
            x = scheduler.step(velocity, t, x).prev_sample
            if mask is not None and i + 1 < end:
                s = float(sigmas[i + 1])
                x = (s * noise + (1 - s) * x0) * (1 - mask) + x * mask
            if progress is not None:
                progress(n + 1, end - begin)
        if clean is not None:
            result = clean
        elif last < total:
            result = x / (1 - float(sigmas[end]))
        else:
            result = x
        result = result.float().cpu() / scale + shift
    if mask is not None:
        mask = mask.cpu()
        if clean is None and last < total:
            s = float(sigmas[end])
            known = samples_in + (noise.cpu() * s / (1 - s)) / scale
        else:
            known = samples_in
        result = known * (1 - mask) + result * mask
    out_latent["samples"] = result
    return out_latent
