"""The one denoising loop, over a `SamplingRequest`, with ComfyUI's sampling semantics for every model family.

Each step reports progress and honours the interrupt; latent previews go out at most every 0.1 s. The loop is
the one diffusers' pipelines run (so that, for the same scheduler, seed, steps and cfg, txt2img and img2img give
their results), with what ComfyUI adds: `denoise < 1` runs the last `steps` of a `steps / denoise` schedule,
`start/end` steps with or without leftover noise, noise masks for inpainting, per-image noise from `batch_index`,
and CFG `uncond + (cond - uncond) * cfg` with the unconditional pass skipped at cfg == 1.

What differs between models is a strategy: the MODEL handle gives the run's noise space (nodes/sd/noise_space.py:
eps, v or sample prediction on a UNet schedule; nodes/sd/flow.py: flow matching) and its denoiser call (what the
family's network takes besides latent, timestep and context). Latents enter and leave in ComfyUI's convention:
unscaled VAE latents, and a latent with leftover noise is the space's leftover-noise latent in the model's scaled
space, so that a following sampler with add_noise disabled resumes where this one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.nodes.sd.interrupt_hooks import interrupt_checks
from PIL import Image

if TYPE_CHECKING:
    from latentgraph.nodes.sd.noise_space import NoiseSpace

# Previews cost a device-to-host copy: sent for the first and last step, and in between at most this often (s).
# Latent area (height x width) from which interrupts are also checked inside each denoiser call: 64x64 is a
# 512x512 SD1 image, where a step on a CPU takes seconds.
BLOCK_CHECKS_MIN_AREA = 64 * 64
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


class Denoiser(Protocol):
    """A family's network call: the output for `x` holding len(options) groups of equal batch, group i conditioned
    by context[i] and options[i] (pooled embeddings, time ids, ...); `negative[i]` marks the unconditional ones."""

    def __call__(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 options: list[dict[str, Any]], negative: list[bool]) -> torch.Tensor: ...


def guided(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: Conditioning,
           negative: Conditioning, cfg: float, denoiser: Denoiser) -> torch.Tensor:
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
        result = denoiser(unet, model_in, t, context, [entries[i][1] for i in indices],
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


def step_window(steps: int, denoise: float, start_step: int, end_step: int) -> tuple[int, int, int] | None:
    """(schedule length, first step, end step) as ComfyUI runs them: `denoise < 1` takes the last `steps` of a
    `steps / denoise` schedule, and start/end steps cut that window; None when there is nothing to run."""
    if denoise <= 0:
        return None
    total = steps if denoise >= 0.9999 else max(int(steps / denoise), steps)
    offset = total - steps
    first, last = offset + start_step, offset + min(end_step, steps)
    return (total, first, last) if first < last else None


class SampledModel(Protocol):
    """What the loop needs of a MODEL handle: its network for the run, its noise space and its denoiser call."""

    def use(self) -> Any: ...

    def noise_space(self, sampler_name: str, scheduler_name: str) -> NoiseSpace: ...

    def denoiser(self) -> Denoiser: ...


@dataclass
class SamplingRequest:
    """One sampling run, as KSampler and KSamplerAdvanced describe it (ComfyUI's names and defaults)."""

    model: SampledModel
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler_name: str
    positive: Conditioning
    negative: Conditioning
    latent: dict[str, Any]
    denoise: float = 1.0
    add_noise: bool = True
    start_step: int = 0
    end_step: int = 10000
    force_full_denoise: bool = True
    progress: Callable[[int, int], None] | None = None
    preview: Callable[[Image.Image], None] | None = None
    check_interrupt: Callable[[], None] | None = None


class _Previews:
    """Latent previews: the first and the last, and in between at most one per PREVIEW_INTERVAL."""

    def __init__(self, send: Callable[[Image.Image], None] | None) -> None:
        self.send = send
        self.last = 0.0

    def __call__(self, estimate: torch.Tensor, forced: bool) -> None:
        if self.send is not None and (forced or time.monotonic() - self.last >= PREVIEW_INTERVAL):
            self.send(latent_preview(estimate[0]))
            self.last = time.monotonic()


@torch.no_grad()
def run(request: SamplingRequest) -> dict[str, Any]:
    """Denoises the request's latent and returns a new LATENT (the input's other entries, such as its noise mask,
    kept)."""
    r = request
    latent = r.latent
    samples_in = latent["samples"].float()
    out_latent = dict(latent)
    window = step_window(r.steps, r.denoise, r.start_step, r.end_step)
    if window is None:
        return out_latent
    total, first, last = window
    space = r.model.noise_space(r.sampler_name, r.scheduler_name)
    denoiser = r.model.denoiser()
    preview = _Previews(r.preview)
    # Checks inside a denoiser call (before each block) only where one call is long: they cost the hook dispatch on
    # every block (6% of a step of a 64x64-pixel image on the demo model), and between steps is soon enough there.
    within_step = r.check_interrupt if samples_in.shape[-2] * samples_in.shape[-1] >= BLOCK_CHECKS_MIN_AREA else None
    with r.model.use() as used, interrupt_checks(used, within_step) as net:
        device = net.device
        space.set_timesteps(total, device)
        order, timesteps = space.order, space.timesteps
        begin = first * order
        end = last * order if last < total else len(timesteps)
        space.set_begin_index(begin)
        x0 = space.to_model(samples_in, device)
        noise, generator = prepare_noise(samples_in, r.seed, latent.get("batch_index"))
        noise = noise.to(device)
        x = space.initial(x0, noise, begin, r.add_noise)
        mask = _mask_for(latent, x.shape, device)
        stop_early = r.force_full_denoise and last < total
        final_first = (last - 1) * order
        clean: torch.Tensor | None = None
        for n, i in enumerate(range(begin, end)):
            if r.check_interrupt is not None:
                r.check_interrupt()
            output = guided(net, space.model_input(x, i), timesteps[i], r.positive, r.negative, r.cfg, denoiser)
            estimate = space.denoised(x, output, i)
            preview(estimate, n == 0 or i + 1 == end or stop_early and i == final_first)
            if stop_early and i == final_first:
                clean = estimate
                if r.progress is not None:
                    r.progress(end - begin, end - begin)
                break
            x = space.step(output, i, x, generator)
            if mask is not None and i + 1 < end:
                x = space.noised(x0, noise, i + 1) * (1 - mask) + x * mask
            if r.progress is not None:
                r.progress(n + 1, end - begin)
        leftover = clean is None and last < total
        result = space.from_model(clean if clean is not None else space.leftover(x, end) if leftover else x)
    if mask is not None:
        mask = mask.cpu()
        known = samples_in + space.leftover_noise(noise.cpu(), end) / space.scale if leftover else samples_in
        result = known * (1 - mask) + result * mask
    out_latent["samples"] = result
    return out_latent


def sample(model: SampledModel, **options: Any) -> dict[str, Any]:
    """`run(SamplingRequest(model, **options))`, for scripts and tests that call the loop directly."""
    return run(SamplingRequest(model=model, **options))
