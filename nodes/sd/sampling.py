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
from latentgraph.nodes.sd.controlnet import controlled
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


@dataclass(frozen=True)
class GuideStep:
    """The model call as ComfyUI's sampling function sees it, for what guided() does beyond plain CFG: timestep
    ranges (the call's sigma against the entries' start/end percents, mapped by the model's `percent_to_sigma`),
    and CFG functions (RescaleCFG), which work on clean estimates of ComfyUI's input latent `x` (x0 + sigma * noise;
    for flow models the flow latent). `to_denoised` / `from_denoised` map the model's output to the clean estimate
    and back."""

    sigma: float
    percent_to_sigma: Callable[[float], float]
    x: torch.Tensor
    to_denoised: Callable[[torch.Tensor], torch.Tensor]
    from_denoised: Callable[[torch.Tensor], torch.Tensor]


# ComfyUI's sampler_cfg_function: args (cond, uncond: x - clean estimates; cond_scale, sigma, input) -> x - result
CfgFunction = Callable[[dict[str, Any]], torch.Tensor]
# Options that say where and when an entry applies (ComfyUI's area, mask and timestep-range conditioning).
PLACEMENT_KEYS = ("area", "mask", "start_percent", "end_percent")
FEATHER = 8  # latent pixels over which an area's inner edges fade in, as ComfyUI's get_area_and_mult does
NO_WEIGHT = 1e-37  # ComfyUI's initial weight sum per pixel: a pixel no entry covers gets a clean estimate of 0


def _batched_outputs(unet: torch.nn.Module, inputs: list[torch.Tensor], t: torch.Tensor,
                     entries: list[tuple[torch.Tensor, dict[str, Any], bool]], denoiser: Denoiser,
                     ) -> list[torch.Tensor]:
    """The model's output for each entry (embeddings, options, negative) on its input; entries with inputs of one
    shape and contexts of one token length share a batched call."""
    dtype = next(unet.parameters()).dtype  # ModelMixin.dtype walks every parameter
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(entries)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (emb, _, _) in enumerate(entries):
        groups.setdefault((emb.shape[1], *inputs[i].shape[-2:]), []).append(i)
    for indices in groups.values():
        x = inputs[indices[0]]
        context = torch.cat([entries[i][0].to(x.device, dtype).expand(x.shape[0], -1, -1) for i in indices])
        model_in = torch.cat([inputs[i] for i in indices]).to(dtype)
        result = denoiser(unet, model_in, t, context, [entries[i][1] for i in indices],
                          [entries[i][2] for i in indices])
        for i, chunk in zip(indices, result.chunk(len(indices))):
            outputs[i] = chunk
    return outputs


def placed_conditioning(positive: Conditioning, negative: Conditioning) -> bool:
    """Whether any entry has an area, a mask or a timestep range (and so needs ComfyUI's placed combination)."""
    return any(key in opts for _, opts in [*positive, *negative] for key in PLACEMENT_KEYS)


def guide_step(space: NoiseSpace, x: torch.Tensor, i: int) -> GuideStep:
    """The GuideStep of the loop's call at timestep index `i` on the loop's latent `x`."""
    return GuideStep(space.call_sigma(i), space.percent_to_sigma, space.sigma_input(x, i),
                     lambda output: space.denoised(x, output, i), lambda x0: space.output_for(x, x0, i))


def guided(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: Conditioning,
           negative: Conditioning, cfg: float, denoiser: Denoiser, step: GuideStep | None = None,
           cfg_function: CfgFunction | None = None) -> torch.Tensor:
    """The CFG-combined model output (eps/v UNets and flow transformers alike); entries of equal token length
    share one batched call.

    Plain entries are averaged weighted by their `strength`. Entries with an area, a mask or a timestep range are
    combined as ComfyUI's calc_cond_batch does (see `_placed_prediction`); `step` is needed for timestep ranges and
    `cfg_function`. The options dict of each entry reaches the denoiser as it is.
    """
    if placed_conditioning(positive, negative):
        cond, uncond = _placed_predictions(unet, x, t, positive, negative if cfg != 1.0 else [], denoiser, step)
    else:
        cond, uncond = _plain_predictions(unet, x, t, positive, negative if cfg != 1.0 else [], denoiser)
    if cfg == 1.0 or uncond is None:
        return cond
    if cfg_function is not None:
        if step is None:
            raise ValueError("this model's CFG function (RescaleCFG) needs the sampler's sigma, which this sampling "
                             "loop does not give")
        result = step.x - cfg_function({
            "cond": step.x - step.to_denoised(cond), "uncond": step.x - step.to_denoised(uncond), "cond_scale": cfg,
            "sigma": torch.full((x.shape[0],), step.sigma, device=x.device), "input": step.x})
        return step.from_denoised(result)
    return uncond + cfg * (cond - uncond)


def _plain_predictions(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: Conditioning,
                       negative: Conditioning, denoiser: Denoiser) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond, uncond): the strength-weighted means of the entries' outputs (uncond None without negatives)."""
    entries = [(emb, opts, True) for emb, opts in negative]
    entries += [(emb, opts, False) for emb, opts in positive]
    outputs = _batched_outputs(unet, [x] * len(entries), t, entries, denoiser)

    def mean(negative_side: bool) -> torch.Tensor:
        picked = [(outputs[i], float(entries[i][1].get("strength", 1.0))) for i in range(len(entries))
                  if entries[i][2] == negative_side]
        total = sum(w for _, w in picked)
        return sum(out * w for out, w in picked) / total

    return mean(False), mean(True) if negative else None


@dataclass
class _Placed:
    """One conditioning entry resolved for this latent: its area (height, width, y, x in latent pixels; None: the
    whole latent), its mask at latent size, its weights and its timestep range in sigmas."""

    embeddings: torch.Tensor
    options: dict[str, Any]
    area: tuple[int, int, int, int] | None
    mask: torch.Tensor | None
    strength: float
    mask_strength: float
    sigma_start: float | None
    sigma_end: float | None


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """ComfyUI's area for `set_area_to_bounds`: the box of the mask's nonzero pixels over the batch, at least 8x8
    latent pixels (8x8 at the origin for an empty mask)."""
    nonzero = mask.abs().amax(dim=0) != 0
    if not bool(nonzero.any()):
        return (8, 8, 0, 0)
    ys, xs = torch.where(nonzero)
    top, left = int(ys.min()), int(xs.min())
    return (max(8, int(ys.max()) - top + 1), max(8, int(xs.max()) - left + 1), top, left)


def _resolve(embeddings: torch.Tensor, options: dict[str, Any], size: tuple[int, int], device: torch.device,
             step: GuideStep | None) -> _Placed:
    """ComfyUI's resolve_areas_and_cond_masks and calculate_start_end_timesteps for one entry."""
    height, width = size
    area = options.get("area")
    if area is not None and area[0] == "percentage":
        _, h, w, y, x = area
        area = (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    mask = options.get("mask")
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.float32)
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
        if tuple(mask.shape[1:]) != size:
            mask = F.interpolate(mask.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        if options.get("set_area_to_bounds", False):
            area = _mask_bounds(mask)
    sigma_start = sigma_end = None
    if "start_percent" in options or "end_percent" in options:
        if step is None:
            raise ValueError("conditioning with a timestep range (ConditioningSetTimestepRange) needs the sampler's "
                             "sigma, which this sampling loop does not give")
        if "start_percent" in options:
            sigma_start = step.percent_to_sigma(float(options["start_percent"]))
        if "end_percent" in options:
            sigma_end = step.percent_to_sigma(float(options["end_percent"]))
    return _Placed(embeddings, options, None if area is None else tuple(int(v) for v in area), mask,
                   float(options.get("strength", 1.0)), float(options.get("mask_strength", 1.0)), sigma_start,
                   sigma_end)


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3] and outer[0] + outer[2] >= inner[0] + inner[2]
            and outer[1] + outer[3] >= inner[1] + inner[3])


def _add_same_area(side: list[_Placed], entry: _Placed) -> None:
    """ComfyUI's create_cond_with_same_area_if_none: an area entry of one side gets a counterpart on the other,
    placed as it is (area, mask, strengths, timestep range) and conditioned as the other side's smallest entry
    that contains its area (or any entry without area), unless that one has exactly the same area."""
    if entry.area is None:
        return
    smallest: _Placed | None = None
    for other in side:
        if other.area is not None:
            if _inside(entry.area, other.area) and (
                    smallest is None or smallest.area is None
                    or smallest.area[0] * smallest.area[1] > other.area[0] * other.area[1]):
                smallest = other
        elif smallest is None:
            smallest = other
    if smallest is None or smallest.area == entry.area:
        return
    side.append(_Placed(smallest.embeddings, smallest.options, entry.area, entry.mask, entry.strength,
                        entry.mask_strength, entry.sigma_start, entry.sigma_end))


def _weights(entry: _Placed, crop: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ComfyUI's get_area_and_mult: the per-pixel weight of an entry's output over its area: mask * mask strength
    * strength, and without a mask an area's inner edges (those not on the latent's border) fade in linearly over
    FEATHER pixels."""
    batch, channels, h, w = crop.shape
    if entry.mask is not None:
        mask = entry.mask[:batch]
        if entry.area is not None:
            top, left = entry.area[2], entry.area[3]
            mask = mask[:, top:top + h, left:left + w]
        mask = mask * entry.mask_strength
        mult = mask.unsqueeze(1).repeat(batch // mask.shape[0], channels, 1, 1) * entry.strength
        return mult.to(crop.dtype)
    mult = torch.ones_like(crop) * entry.strength
    if entry.area is None:
        return mult
    top, left = entry.area[2], entry.area[3]
    for t in range(min(FEATHER, h)):
        fade = (t + 1) / FEATHER
        if top != 0:
            mult[:, :, t] *= fade
        if top + h < size[0]:
            mult[:, :, h - 1 - t] *= fade
    for t in range(min(FEATHER, w)):
        fade = (t + 1) / FEATHER
        if left != 0:
            mult[:, :, :, t] *= fade
        if left + w < size[1]:
            mult[:, :, :, w - 1 - t] *= fade
    return mult


def _placed_predictions(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: Conditioning,
                        negative: Conditioning, denoiser: Denoiser, step: GuideStep | None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond, uncond) as ComfyUI's calc_cond_batch makes them: each entry active at this sigma runs the model on
    its area of the latent, and every pixel gets the average of the outputs covering it weighted by `_weights`."""
    size = (x.shape[-2], x.shape[-1])
    sides = [[_resolve(emb, opts, size, x.device, step) for emb, opts in side] for side in (positive, negative)]
    pos, neg = sides
    if negative:
        for entry in list(pos):
            _add_same_area(neg, entry)
        for entry in list(neg):
            _add_same_area(pos, entry)
    sigma = step.sigma if step is not None else None
    active = [[e for e in side if (e.sigma_start is None or sigma is None or sigma <= e.sigma_start)
               and (e.sigma_end is None or sigma is None or sigma >= e.sigma_end)] for side in sides]
    entries: list[tuple[torch.Tensor, dict[str, Any], bool]] = []
    crops: list[torch.Tensor] = []
    placed: list[tuple[_Placed, int]] = []
    for side_index, side in enumerate(active):
        for entry in side:
            options = entry.options
            if entry.area is None:
                crop = x
            else:
                h, w, top, left = entry.area
                h, w = min(h, size[0] - top), min(w, size[1] - left)
                entry.area = (h, w, top, left)
                crop = x[:, :, top:top + h, left:left + w]
                if crop.shape[-2:] != x.shape[-2:] and "width" not in options:
                    # ComfyUI sizes SDXL's conditioning by the whole latent, not by the area's crop
                    options = {**options, "width": size[1] * 8, "height": size[0] * 8}
            entries.append((entry.embeddings, options, side_index == 1))
            crops.append(crop)
            placed.append((entry, side_index))
    outputs = _batched_outputs(unet, crops, t, entries, denoiser) if entries else []
    sums = [torch.zeros_like(x, dtype=torch.float32) for _ in sides]
    counts = [torch.full_like(x, NO_WEIGHT, dtype=torch.float32) for _ in sides]
    for (entry, side_index), crop, out in zip(placed, crops, outputs):
        mult = _weights(entry, crop, size).float()
        if entry.area is None:
            sums[side_index] += out.float() * mult
            counts[side_index] += mult
        else:
            h, w, top, left = entry.area
            sums[side_index][:, :, top:top + h, left:left + w] += out.float() * mult
            counts[side_index][:, :, top:top + h, left:left + w] += mult
    results = []
    for total, count in zip(sums, counts):
        mean = total / count
        if step is not None:
            # ComfyUI averages clean estimates: a pixel no active entry covers has a clean estimate of 0
            uncovered = count <= NO_WEIGHT
            if bool(uncovered.any()):
                mean = torch.where(uncovered, step.from_denoised(torch.zeros_like(mean)).float(), mean)
        results.append(mean)
    return results[0], results[1] if negative else None


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
    cfg_function = getattr(r.model, "sampler_cfg_function", None)
    needs_step = cfg_function is not None or placed_conditioning(r.positive, r.negative)
    # Checks inside a denoiser call (before each block) only where one call is long: they cost the hook dispatch on
    # every block (6% of a step of a 64x64-pixel image on the demo model), and between steps is soon enough there.
    per_block = samples_in.shape[-2] * samples_in.shape[-1] >= BLOCK_CHECKS_MIN_AREA
    with r.model.use() as used, interrupt_checks(used, r.check_interrupt, per_block) as net, \
            controlled(denoiser, r.positive, r.negative, space) as denoiser:
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
            step = guide_step(space, x, i) if needs_step else None
            output = guided(net, space.model_input(x, i), timesteps[i], r.positive, r.negative, r.cfg, denoiser,
                            step, cfg_function)
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
