"""Our own denoising loop over a diffusers UNet and scheduler, with ComfyUI's sampling semantics.

Each step reports progress and honours the interrupt; latent previews go out at most every 0.1 s. The loop is
the one diffusers' pipelines run (so that, for the same scheduler, seed, steps and cfg, txt2img and img2img give
their results), with what ComfyUI adds: `denoise < 1` runs the last `steps` of a `steps / denoise` schedule,
`start/end` steps with or without leftover noise, noise masks for inpainting, per-image noise from `batch_index`,
and CFG `uncond + (cond - uncond) * cfg` with the unconditional pass skipped at cfg == 1.

Latents enter and leave in ComfyUI's convention: unscaled VAE latents, and a latent with leftover noise is
`x0 + sigma * noise` in the model's scaled space. Inside, the scheduler's own space is used: noise-level schedulers
(Euler, Heun, LMS, ...) work on `x0 + sigma * noise`, alpha schedulers (DDIM, DPM-Solver, UniPC, LCM) on
`sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.nodes.sd.handles import ModelHandle
from latentgraph.nodes.sd.model_inputs import FLOW_FAMILIES, denoiser_output
from latentgraph.nodes.sd.samplers import make_scheduler
from PIL import Image

# Previews cost a device-to-host copy: sent for the first and last step, and in between at most this often (s).
PREVIEW_INTERVAL = 0.1
# ComfyUI's linear map from SD1.x/SD2.x latents to RGB, good enough for a live preview.
LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
                           [-0.2120, -0.2616, -0.7177]])

Conditioning = list  # [[embeddings [1, T, D], {"strength"?: float, ...}], ...]


def prepare_noise(samples: torch.Tensor, seed: int, batch_index: list[int] | None = None,
                  ) -> tuple[torch.Tensor, torch.Generator]:
    """ComfyUI's noise: one CPU generator seeded once; with `batch_index`, image i gets the i-th draw."""
    generator = torch.Generator("cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(samples.shape, generator=generator, dtype=torch.float32), generator
    unique, inverse = np.unique(np.asarray(batch_index), return_inverse=True)
    draws = []
    for i in range(int(unique[-1]) + 1):
        draw = torch.randn([1, *samples.shape[1:]], generator=generator, dtype=torch.float32)
        if i in unique:
            draws.append(draw)
    return torch.cat([draws[i] for i in inverse]), generator


def latent_preview(x0: torch.Tensor) -> Image.Image:
    """A fast RGB view of a scaled latent image [C, H, W] by a fixed linear projection."""
    x0 = x0.detach().float().cpu()
    if x0.shape[0] == LATENT_RGB.shape[0]:
        rgb = torch.einsum("chw,cr->hwr", x0, LATENT_RGB)
    else:
        rgb = x0[:3].permute(1, 2, 0) / max(float(x0.abs().max()), 1e-6)
    array = (((rgb + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


def _mask_for(latent: dict[str, Any], shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    mask = latent.get("noise_mask")
    if mask is None:
        return None
    mask = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    mask = F.interpolate(mask, size=shape[-2:], mode="bilinear", align_corners=False)
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat((shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, 1, 1)
    return mask[: shape[0]].to(device)


class _Noise:
    """Noise levels of the training schedule, to move latents between the scheduler's space and ComfyUI's."""

    def __init__(self, scheduler: Any) -> None:
        alphas = scheduler.alphas_cumprod.float().cpu()
        self.log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().numpy()
        self.sigma_space = float(scheduler.init_noise_sigma) > 1.0

    def sigma(self, t: torch.Tensor | float) -> float:
        return float(np.exp(np.interp(float(t), np.arange(len(self.log_sigmas)), self.log_sigmas)))

    def to_sigma_space(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return x if self.sigma_space else x * (1 + self.sigma(t) ** 2) ** 0.5

    def from_sigma_space(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return x if self.sigma_space else x / (1 + self.sigma(t) ** 2) ** 0.5

    def denoised(self, x: torch.Tensor, out: torch.Tensor, t: torch.Tensor | float, prediction: str) -> torch.Tensor:
        """The model's estimate of the clean latent at this step."""
        sigma, x_s = self.sigma(t), self.to_sigma_space(x, t)
        if prediction == "v_prediction":
            return x_s / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        if prediction == "sample":
            return out
        return x_s - out * sigma


def guided(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: Conditioning,
            negative: Conditioning, cfg: float, family: str = "sd1") -> torch.Tensor:
    """The CFG-combined model output (eps/v UNets and flow transformers alike); entries of equal token length
    share one batched call."""
    entries = [(emb, opts, "neg") for emb, opts in negative] if cfg != 1.0 else []
    entries += [(emb, opts, "pos") for emb, opts in positive]
    batch, dtype = x.shape[0], next(unet.parameters()).dtype  # ModelMixin.dtype walks every parameter
    outputs: list[torch.Tensor | None] = [None] * len(entries)
    by_length: dict[int, list[int]] = {}
    for i, (emb, _, _) in enumerate(entries):
        by_length.setdefault(emb.shape[1], []).append(i)
    for indices in by_length.values():
        context = torch.cat([entries[i][0].to(x.device, dtype).expand(batch, -1, -1) for i in indices])
        model_in = torch.cat([x] * len(indices)).to(dtype)
        result = denoiser_output(family, unet, model_in, t, context, [entries[i][1] for i in indices],
                                 [entries[i][2] == "neg" for i in indices])
        for i, chunk in zip(indices, result.chunk(len(indices))):
            outputs[i] = chunk

    def mean(kind: str) -> torch.Tensor:
        picked = [(outputs[i], float(entries[i][1].get("strength", 1.0))) for i in range(len(entries))
                  if entries[i][2] == kind]
        total = sum(w for _, w in picked)
        return sum(out * w for out, w in picked) / total

    cond = mean("pos")
    if cfg == 1.0:
        return cond
    uncond = mean("neg")
    return uncond + cfg * (cond - uncond)


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs


def step_window(steps: int, denoise: float, start_step: int, end_step: int) -> tuple[int, int, int] | None:
    """(schedule length, first step, end step) as ComfyUI runs them: `denoise < 1` takes the last `steps` of a
    `steps / denoise` schedule, and start/end steps cut that window; None when there is nothing to run."""
    if denoise <= 0:
        return None
    total = steps if denoise >= 0.9999 else max(int(steps / denoise), steps)
    offset = total - steps
    first, last = offset + start_step, offset + min(end_step, steps)
    return (total, first, last) if first < last else None


@torch.no_grad()
def sample(model: ModelHandle, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler_name: str,
           positive: Conditioning, negative: Conditioning, latent: dict[str, Any], denoise: float = 1.0,
           add_noise: bool = True, start_step: int = 0, end_step: int = 10000, force_full_denoise: bool = True,
           progress: Callable[[int, int], None] | None = None, preview: Callable[[Image.Image], None] | None = None,
           check_interrupt: Callable[[], None] | None = None) -> dict[str, Any]:
    """Denoises `latent` and returns a new LATENT (the input's other entries, such as its noise mask, kept)."""
    if model.family in FLOW_FAMILIES:
        from latentgraph.nodes.sd.flow import sample_flow  # the flow loop builds on this module's helpers

        return sample_flow(model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                           scheduler_name=scheduler_name, positive=positive, negative=negative, latent=latent,
                           denoise=denoise, add_noise=add_noise, start_step=start_step, end_step=end_step,
                           force_full_denoise=force_full_denoise, progress=progress, preview=preview,
                           check_interrupt=check_interrupt)
    samples_in = latent["samples"].float()
    out_latent = dict(latent)
    window = step_window(steps, denoise, start_step, end_step)
    if window is None:
        return out_latent
    total, first, last = window
    scheduler = make_scheduler(sampler_name, scheduler_name, model.scheduler_config, seed=seed)
    scale = model.latent_scale
    with model.use() as unet:
        device = unet.device
        scheduler.set_timesteps(total, device=device)
        levels = _Noise(scheduler)
        order = scheduler.order
        timesteps = scheduler.timesteps
        begin = first * order
        end = last * order if last < total else len(timesteps)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        x0 = samples_in.to(device) * scale
        noise, generator = prepare_noise(samples_in, seed, latent.get("batch_index"))
        noise = noise.to(device)
        if not add_noise:
            x = levels.from_sigma_space(x0, timesteps[begin])
        elif first == 0:
            x = noise * scheduler.init_noise_sigma + levels.from_sigma_space(x0, timesteps[0])
        else:
            x = scheduler.add_noise(x0, noise, timesteps[begin:begin + 1])
        mask = _mask_for(latent, x.shape, device)
        stop_early = force_full_denoise and last < total
        final_first = (last - 1) * order
        kwargs = _step_kwargs(scheduler, generator)
        clean: torch.Tensor | None = None
        previewed = 0.0
        for n, i in enumerate(range(begin, end)):
            if check_interrupt is not None:
                check_interrupt()
            t = timesteps[i]
            output = guided(unet, scheduler.scale_model_input(x, t), t, positive, negative, cfg, model.family)
            estimate = levels.denoised(x, output, t, model.prediction_type)
            if preview is not None and (n == 0 or i + 1 == end or stop_early and i == final_first
                                        or time.monotonic() - previewed >= PREVIEW_INTERVAL):
                preview(latent_preview(estimate[0]))
                previewed = time.monotonic()
            if stop_early and i == final_first:
                clean = estimate
                if progress is not None:
                    progress(end - begin, end - begin)
                break
            x = scheduler.step(output, t, x, **kwargs).prev_sample
            if mask is not None and i + 1 < end:
                known = scheduler.add_noise(x0, noise, timesteps[i + 1:i + 2])
                x = known * (1 - mask) + x * mask
            if progress is not None:
                progress(n + 1, end - begin)
        if clean is not None:
            result = clean
        elif last < total:
            result = levels.to_sigma_space(x, timesteps[end])
        else:
            result = x
        result = result.float().cpu() / scale
    if mask is not None:
        mask = mask.cpu()
        if clean is None and last < total:
            known = samples_in + noise.cpu() * levels.sigma(timesteps[end]) / scale
        else:
            known = samples_in
        result = known * (1 - mask) + result * mask
    out_latent["samples"] = result
    return out_latent
