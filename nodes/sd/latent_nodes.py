"""Latent nodes: empty latents, resizing latents, and noise masks for inpainting."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Latent, Mask
from latentgraph.nodes.imageops import upscale
from latentgraph.nodes.pixel_budget import over_budget

MAX_RESOLUTION = 16384
LATENT_CHANNELS = 4
LatentMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


def _slerp(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b [N, C] (norms interpolated linearly)."""
    a_norm, b_norm = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    a_unit = torch.where(a_norm == 0, torch.zeros_like(a), a / a_norm)
    b_unit = torch.where(b_norm == 0, torch.zeros_like(b), b / b_norm)
    dot = (a_unit * b_unit).sum(-1)
    omega = torch.acos(dot.clamp(-1, 1))
    sin = torch.sin(omega)
    r = ratio.squeeze(1)
    out = (torch.sin((1 - r) * omega) / sin).unsqueeze(1) * a_unit + (torch.sin(r * omega) / sin).unsqueeze(1) * b_unit
    out = out * (a_norm * (1 - ratio) + b_norm * ratio)
    same, opposite = dot > 1 - 1e-5, dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1 - ratio) + b * ratio)[opposite]
    return out


def _neighbours(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each new position: the fraction between, and the indices of, its two old neighbours (bilinear)."""
    coords = F.interpolate(torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1), size=(1, new),
                           mode="bilinear")
    ratios = coords - coords.floor()
    upper = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1) + 1
    upper[..., -1] -= 1
    upper = F.interpolate(upper, size=(1, new), mode="bilinear")
    return ratios.flatten(), coords.to(torch.int64).flatten(), upper.to(torch.int64).flatten()


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resizes [N,C,H,W] latents by slerp between neighbours, first along width, then height (ComfyUI's bislerp)."""
    n, c, h, w = samples.shape
    ratios, lo, hi = _neighbours(w, width)
    a = samples[..., lo].movedim(1, -1).reshape(-1, c)
    b = samples[..., hi].movedim(1, -1).reshape(-1, c)
    r = ratios.reshape(1, 1, -1).expand(n, h, -1).reshape(-1, 1)
    result = _slerp(a, b, r).reshape(n, h, width, c).movedim(-1, 1)
    ratios, lo, hi = _neighbours(h, height)
    a = result[:, :, lo, :].movedim(1, -1).reshape(-1, c)
    b = result[:, :, hi, :].movedim(1, -1).reshape(-1, c)
    r = ratios.reshape(1, -1, 1).expand(n, -1, width).reshape(-1, 1)
    return _slerp(a, b, r).reshape(n, height, width, c).movedim(-1, 1)


def _center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    y = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    return samples[..., y:old_h - y, x:old_w - x]


def resize_latent(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"):
    """Resizes [N,C,H,W] latents to width x height latent pixels by one of ComfyUI's latent upscale methods."""
    if method == "bislerp":
        return bislerp((_center_crop(samples, width, height) if crop == "center" else samples).float(), width, height)
    return upscale(samples, width, height, method, crop)


class EmptyLatentImage(Node):
    """A batch of empty latent images to start text-to-image sampling from."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Empty Latent Image"
    RETURN_TYPES = ("LATENT",)

    width: int = Input(512, ge=16, le=MAX_RESOLUTION, step=8, tooltip="The width of the images in pixels.")
    height: int = Input(512, ge=16, le=MAX_RESOLUTION, step=8, tooltip="The height of the images in pixels.")
    batch_size: int = Input(1, ge=1, le=4096, tooltip="The number of images in the batch.")

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """The pixel budget, before anything is allocated (the VAE decode of a huge latent takes the memory)."""
        problem = over_budget(inputs["width"], inputs["height"], inputs["batch_size"], "the decoded batch")
        return [("width", problem)] if problem else []

    def execute(self, ctx: RunContext) -> tuple:
        shape = (self.batch_size, LATENT_CHANNELS, self.height // 8, self.width // 8)
        return ({"samples": torch.zeros(shape)},)


class LatentUpscale(Node):
    """Resizes latent images to a size in pixels (0 keeps the aspect ratio)."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Upscale Latent"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    upscale_method: LatentMethod = Input("nearest-exact")
    width: int = Input(512, ge=0, le=MAX_RESOLUTION, step=8)
    height: int = Input(512, ge=0, le=MAX_RESOLUTION, step=8)
    crop: Literal["disabled", "center"] = Input("disabled")

    def execute(self, ctx: RunContext) -> tuple:
        samples = self.samples["samples"]
        width, height = self.width, self.height
        if width == 0 and height == 0:
            return (dict(self.samples),)
        if width == 0:
            height = max(64, height)
            width = max(64, round(samples.shape[-1] * height / samples.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(samples.shape[-2] * width / samples.shape[-1]))
        out = dict(self.samples)
        out["samples"] = resize_latent(samples, width // 8, height // 8, self.upscale_method, self.crop)
        return (out,)


class LatentUpscaleBy(Node):
    """Resizes latent images by a factor."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Upscale Latent By"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    upscale_method: LatentMethod = Input("nearest-exact")
    scale_by: float = Input(1.5, ge=0.01, le=8.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        samples = self.samples["samples"]
        width = round(samples.shape[-1] * self.scale_by)
        height = round(samples.shape[-2] * self.scale_by)
        out = dict(self.samples)
        out["samples"] = resize_latent(samples, width, height, self.upscale_method)
        return (out,)


class SetLatentNoiseMask(Node):
    """Restricts sampling to the masked area (1 = repaint, 0 = keep) of a latent image."""

    CATEGORY = "latent/inpaint"
    DISPLAY_NAME = "Set Latent Noise Mask"
    RETURN_TYPES = ("LATENT",)

    samples: Latent
    mask: Mask

    def execute(self, ctx: RunContext) -> tuple:
        out = dict(self.samples)
        out["noise_mask"] = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1])
        return (out,)
