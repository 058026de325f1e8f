"""Latent nodes that need no model: compositing, blending, flipping, rotating, cropping, batching, saving.

Names, inputs, defaults and ranges are ComfyUI's, and so is the arithmetic (including its clamping of positions and
its `batch_index` bookkeeping), so that a shared workflow gives the same latents here as there. A LATENT is a dict:
`samples` [B,C,h,w] (unscaled VAE latents), optionally `noise_mask` and `batch_index`; nodes copy the dict and
replace what they change, so keys they do not know about travel on.

Pixel positions and sizes are divided by 8 (the SD VAEs' downscale factor) to latent positions, as ComfyUI does.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import Latent, Mask
from latentgraph.nodes.imageops import upscale
from safetensors.torch import load_file, save_file

MAX_RESOLUTION = 16384
LATENT_FACTOR = 8
LATENT_SUFFIX = ".latent"
# Latents saved before ComfyUI versioned the format were scaled by SD1's factor; they are unscaled on load.
LEGACY_LATENT_SCALE = 0.18215


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """`tensor` cut or tiled along dim 0 to `batch` entries (ComfyUI's repeat_to_batch_size)."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = math.ceil(batch / tensor.shape[0])
        return tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:batch]
    return tensor


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
              multiplier: int, resize_source: bool) -> torch.Tensor:
    """Pastes channel-first `source` [B,C,h,w] into a copy of `destination` at (x, y) in pixels, through `mask`.

    Positions are divided by `multiplier` (8 for latents, 1 for images); the source is cut where it would leave the
    destination; the mask (any size, 1 = source) is resized bilinearly to the source; a batch-1 source or mask is
    repeated to the destination's batch. This is ComfyUI's `composite` of nodes_mask.py.
    """
    destination = destination.clone()
    source = source.to(destination.device, destination.dtype)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = max(-source.shape[3] * multiplier, min(x, destination.shape[3] * multiplier))
    y = max(-source.shape[2] * multiplier, min(y, destination.shape[2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[3], top + source.shape[2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, destination.dtype).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = repeat_to_batch(F.interpolate(mask, size=source.shape[-2:], mode="bilinear"), source.shape[0])
    visible_w = destination.shape[3] - left + min(0, x)
    visible_h = destination.shape[2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    region = destination[:, :, top:bottom, left:right]
    destination[:, :, top:bottom, left:right] = mask * source[:, :, :visible_h, :visible_w] + (1 - mask) * region
    return destination


def _with_samples(latent: dict[str, Any], samples: torch.Tensor) -> dict[str, Any]:
    out = dict(latent)
    out["samples"] = samples
    return out


class LatentComposite(Node):
    """Pastes one latent into another at a position in pixels, with a linear feather on the inner edges."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Latent Composite"
    RETURN_TYPES = ("LATENT",)

    samples_to: Latent
    samples_from: Latent
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    feather: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)

    def execute(self, ctx: RunContext) -> tuple:
        x, y, feather = self.x // LATENT_FACTOR, self.y // LATENT_FACTOR, self.feather // LATENT_FACTOR
        target = self.samples_to["samples"]
        out = target.clone()
        height, width = target.shape[2], target.shape[3]
        if x >= width or y >= height:
            return (_with_samples(self.samples_to, out),)
        source = self.samples_from["samples"][:, :, :height - y, :width - x].to(out.dtype)
        h, w = source.shape[2], source.shape[3]
        if feather == 0:
            out[:, :, y:y + h, x:x + w] = source
        else:
            # Only edges inside the target fade: rows/columns t from an edge get weight (t + 1) / feather.
            mask = torch.ones_like(source)
            for t in range(feather):
                rate = (t + 1) / feather
                if y != 0:
                    mask[:, :, t, :] *= rate
                if y + h < height:
                    mask[:, :, h - 1 - t, :] *= rate
                if x != 0:
                    mask[:, :, :, t] *= rate
                if x + w < width:
                    mask[:, :, :, w - 1 - t] *= rate
            out[:, :, y:y + h, x:x + w] = source * mask + out[:, :, y:y + h, x:x + w] * (1 - mask)
        return (_with_samples(self.samples_to, out),)


class LatentCompositeMasked(Node):
    """Pastes one latent into another at a position in pixels, through an optional mask (1 = source)."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Latent Composite Masked"
    RETURN_TYPES = ("LATENT",)

    destination: Latent
    source: Latent
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    resize_source: bool = Input(False)
    mask: Mask | None = None

    def execute(self, ctx: RunContext) -> tuple:
        samples = composite(self.destination["samples"], self.source["samples"], self.x, self.y, self.mask,
                            LATENT_FACTOR, self.resize_source)
        return (_with_samples(self.destination, samples),)


class LatentBlend(Node):
    """Mixes two latents: samples1 * blend_factor + samples2 * (1 - blend_factor)."""

    CATEGORY = "_for_testing"
    DISPLAY_NAME = "Latent Blend"
    RETURN_TYPES = ("LATENT",)

    samples1: Latent
    samples2: Latent
    blend_factor: float = Input(0.5, ge=0, le=1, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        first, second = self.samples1["samples"], self.samples2["samples"]
        if first.shape != second.shape:
            second = upscale(second, first.shape[3], first.shape[2], "bicubic", "center")
        blended = first * self.blend_factor + second.to(first.dtype) * (1 - self.blend_factor)
        return (_with_samples(self.samples1, blended),)


class LatentFlip(Node):
    """Mirrors latents: "x-axis" flips top to bottom, "y-axis" left to right."""

    CATEGORY = "latent/transform"
    DISPLAY_NAME = "Flip Latent"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    flip_method: Literal["x-axis: vertically", "y-axis: horizontally"] = Input("x-axis: vertically")

    def execute(self, ctx: RunContext) -> tuple:
        dim = 2 if self.flip_method.startswith("x") else 3
        return (_with_samples(self.samples, torch.flip(self.samples["samples"], dims=[dim])),)


class LatentRotate(Node):
    """Rotates latents clockwise by a multiple of 90 degrees."""

    CATEGORY = "latent/transform"
    DISPLAY_NAME = "Rotate Latent"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    rotation: Literal["none", "90 degrees", "180 degrees", "270 degrees"] = Input("none")

    def execute(self, ctx: RunContext) -> tuple:
        turns = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}[self.rotation]
        return (_with_samples(self.samples, torch.rot90(self.samples["samples"], k=turns, dims=[3, 2])),)


class LatentCrop(Node):
    """Cuts a rectangle given in pixels out of latents; the corner is kept at least 64 pixels inside."""

    CATEGORY = "latent/transform"
    DISPLAY_NAME = "Crop Latent"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    width: int = Input(512, ge=64, le=MAX_RESOLUTION, step=8)
    height: int = Input(512, ge=64, le=MAX_RESOLUTION, step=8)
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)

    def execute(self, ctx: RunContext) -> tuple:
        samples = self.samples["samples"]
        x = min(self.x // LATENT_FACTOR, samples.shape[3] - 8)
        y = min(self.y // LATENT_FACTOR, samples.shape[2] - 8)
        x, y = max(x, 0), max(y, 0)
        cropped = samples[:, :, y:y + self.height // LATENT_FACTOR, x:x + self.width // LATENT_FACTOR]
        return (_with_samples(self.samples, cropped),)


class LatentFromBatch(Node):
    """Takes `length` latents from a batch starting at `batch_index`; they keep their noise (batch_index)."""

    CATEGORY = "latent/batch"
    DISPLAY_NAME = "Get Latent From Batch"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    batch_index: int = Input(0, ge=0, le=63)
    length: int = Input(1, ge=1, le=64)

    def execute(self, ctx: RunContext) -> tuple:
        samples = self.samples["samples"]
        start = min(samples.shape[0] - 1, self.batch_index)
        length = min(samples.shape[0] - start, self.length)
        out = _with_samples(self.samples, samples[start:start + length].clone())
        masks = self.samples.get("noise_mask")
        if masks is not None:
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                out["noise_mask"] = repeat_to_batch(masks, samples.shape[0])[start:start + length].clone()
        previous = self.samples.get("batch_index")
        out["batch_index"] = (list(range(start, start + length)) if previous is None
                              else list(previous[start:start + length]))
        return (out,)


class RepeatLatentBatch(Node):
    """Repeats a latent batch `amount` times; repeated images get new noise (their batch_index is offset)."""

    CATEGORY = "latent/batch"
    DISPLAY_NAME = "Repeat Latent Batch"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    amount: int = Input(1, ge=1, le=64)

    def execute(self, ctx: RunContext) -> tuple:
        samples = self.samples["samples"]
        out = _with_samples(self.samples, samples.repeat(self.amount, 1, 1, 1))
        masks = self.samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:
            out["noise_mask"] = masks.repeat(self.amount, 1, 1, 1)
        indices = self.samples.get("batch_index")
        if indices is not None:
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = list(indices) + [i + k * offset for k in range(1, self.amount) for i in indices]
        return (out,)


class LatentBatch(Node):
    """Joins two latent batches; the second is resized to the first's size when they differ."""

    CATEGORY = "latent/batch"
    DISPLAY_NAME = "Batch Latents (DEPRECATED)"
    RETURN_TYPES = ("LATENT",)

    samples1: Latent
    samples2: Latent

    def execute(self, ctx: RunContext) -> tuple:
        first, second = self.samples1["samples"], self.samples2["samples"]
        if first.shape[1:] != second.shape[1:]:
            second = upscale(second, first.shape[3], first.shape[2], "bilinear", "center")
        out = _with_samples(self.samples1, torch.cat((first, second.to(first.dtype)), dim=0))
        # As in ComfyUI, each batch keeps its own indices, so the second batch's images get the first's noise.
        out["batch_index"] = (list(self.samples1.get("batch_index", range(first.shape[0])))
                              + list(self.samples2.get("batch_index", range(second.shape[0]))))
        return (out,)


def reshape_like(target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """`latent` resized (bilinear, centre crop) to the target's size and tiled or cut to its batch (ComfyUI's
    reshape_latent_to)."""
    if latent.shape[1:] != target.shape[1:]:
        latent = upscale(latent, target.shape[3], target.shape[2], "bilinear", "center")
    return repeat_to_batch(latent, target.shape[0])


class LatentAdd(Node):
    """samples1 + samples2 (samples2 resized to samples1 when they differ)."""

    CATEGORY = "latent/advanced"
    RETURN_TYPES = ("LATENT",)

    samples1: Latent
    samples2: Latent

    def execute(self, ctx: RunContext) -> tuple:
        first = self.samples1["samples"]
        return (_with_samples(self.samples1, first + reshape_like(first, self.samples2["samples"])),)


class LatentSubtract(Node):
    """samples1 - samples2 (samples2 resized to samples1 when they differ)."""

    CATEGORY = "latent/advanced"
    RETURN_TYPES = ("LATENT",)

    samples1: Latent
    samples2: Latent

    def execute(self, ctx: RunContext) -> tuple:
        first = self.samples1["samples"]
        return (_with_samples(self.samples1, first - reshape_like(first, self.samples2["samples"])),)


class LatentMultiply(Node):
    """samples * multiplier."""

    CATEGORY = "latent/advanced"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    multiplier: float = Input(1.0, ge=-10.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (_with_samples(self.samples, self.samples["samples"] * self.multiplier),)


class LatentInterpolate(Node):
    """Interpolates directions per latent pixel (vectors over channels normalised, mixed by ratio, renormalised)
    and lengths linearly: ratio 1 gives samples1, 0 gives samples2."""

    CATEGORY = "latent/advanced"
    RETURN_TYPES = ("LATENT",)

    samples1: Latent
    samples2: Latent
    ratio: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        first = self.samples1["samples"]
        second = reshape_like(first, self.samples2["samples"])
        norm1, norm2 = torch.linalg.vector_norm(first, dim=1), torch.linalg.vector_norm(second, dim=1)
        # ComfyUI divides [B,C,H,W] by norms [B,H,W] without keepdim, which is this per-pixel division for a batch
        # of one (its common use) and fails or mixes images otherwise; per pixel is what it means.
        unit1 = torch.nan_to_num(first / norm1.unsqueeze(1))
        unit2 = torch.nan_to_num(second / norm2.unsqueeze(1))
        mixed = unit1 * self.ratio + unit2 * (1.0 - self.ratio)
        direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
        length = (norm1 * self.ratio + norm2 * (1.0 - self.ratio)).unsqueeze(1)
        return (_with_samples(self.samples1, direction * length),)


class LatentBatchSeedBehavior(Node):
    """"fixed": every image of the batch gets the first image's noise; "random": each its own."""

    CATEGORY = "latent/advanced"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    seed_behavior: Literal["random", "fixed"] = Input("fixed")

    def execute(self, ctx: RunContext) -> tuple:
        out = dict(self.samples)
        if self.seed_behavior == "random":
            out.pop("batch_index", None)
        else:
            first = out.get("batch_index", [0])[0]
            out["batch_index"] = [first] * self.samples["samples"].shape[0]
        return (out,)


def list_input_latents(env: Environment) -> list[str]:
    root = env.folders.input_dir
    return sorted(p.name for p in root.iterdir() if p.is_file() and p.name.endswith(LATENT_SUFFIX))


def _latent_path(env: Environment, name: str) -> Path:
    root = env.folders.input_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise FileNotFoundError(f"latent file {name!r} not found in {root}")
    return path


def _next_counter(folder: Path, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_\.latent$")
    counters = [int(m.group(1)) for p in folder.glob(f"{prefix}_*_.latent") if (m := pattern.match(p.name))]
    return max(counters, default=0) + 1


class SaveLatent(Node):
    """Saves latents as a `.latent` (safetensors) file in the output folder, with the workflow as metadata."""

    CATEGORY = "_for_testing"
    DISPLAY_NAME = "Save Latent"
    OUTPUT_NODE = True

    samples: Latent
    filename_prefix: str = Input("latents/ComfyUI")
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        root = ctx.env.folders.output_dir.resolve()
        target = (root / self.filename_prefix).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"filename_prefix {self.filename_prefix!r} would save outside the output folder")
        folder, prefix = target.parent, target.name
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {"prompt": json.dumps(self.prompt) if self.prompt is not None else ""}
        for key, value in (self.extra_pnginfo or {}).items():
            metadata[key] = json.dumps(value)
        name = f"{prefix}_{_next_counter(folder, prefix):05}_{LATENT_SUFFIX}"
        tensors = {"latent_tensor": self.samples["samples"].contiguous().cpu(),
                   "latent_format_version_0": torch.tensor([])}
        save_file(tensors, str(folder / name), metadata=metadata)
        entry = {"filename": name, "subfolder": folder.relative_to(root).as_posix().strip("."), "type": "output"}
        return NodeOutput(ui={"latents": [entry]})


class LoadLatent(Node):
    """Loads a `.latent` file from the input folder (older, scaled files are unscaled)."""

    CATEGORY = "_for_testing"
    DISPLAY_NAME = "Load Latent"
    RETURN_TYPES = ("LATENT",)

    latent: str = Input(choices=list_input_latents)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return hashlib.sha256(_latent_path(env, inputs["latent"]).read_bytes()).hexdigest()

    def execute(self, ctx: RunContext) -> tuple:
        data = load_file(str(_latent_path(ctx.env, self.latent)), device="cpu")
        scale = 1.0 if "latent_format_version_0" in data else 1.0 / LEGACY_LATENT_SCALE
        return ({"samples": data["latent_tensor"].float() * scale},)
