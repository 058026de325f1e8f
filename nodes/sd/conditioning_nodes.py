"""Conditioning nodes that rework encoded prompts: zeroing, concatenating, averaging, weighting, placing.

CONDITIONING is ComfyUI's list of `[embeddings [1, T, D], options]` entries; options carry `pooled_output` (SDXL,
SD3) and what nodes add. Without placement the sampler runs the model once per entry and averages the predictions
weighted by each entry's `strength`. The placement nodes add ComfyUI's options, which the sampler (guided() in
nodes/sd/sampling.py) honours as ComfyUI's calc_cond_batch does: `area` (height, width, y, x in latent pixels, or
("percentage", h, w, y, x)) runs the model on that part of the latent with feathered inner edges, `mask` (with
`mask_strength`, and `set_area_to_bounds` for "mask bounds") weights the output per pixel, and `start_percent` /
`end_percent` switch the entry off outside that part of the schedule. Names, inputs and arithmetic are ComfyUI's.

InpaintModelConditioning adds ComfyUI's `concat_latent_image` / `concat_mask` options, which only inpainting
models (9-channel UNets) read; for the ordinary checkpoints the sampler takes, its effect is its latent: the
image encoded, with the mask as noise mask, exactly as in ComfyUI.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Conditioning, Image, Mask, Vae
from latentgraph.nodes.sd.vae_nodes import crop_to_multiple, encode

log = logging.getLogger(__name__)
MAX_RESOLUTION = 16384


def set_values(conditioning: list, values: dict[str, Any]) -> list:
    """A copy of the conditioning with `values` set in every entry's options (the embeddings are shared)."""
    return [[embeddings, {**options, **values}] for embeddings, options in conditioning]


class ConditioningZeroOut(Node):
    """Replaces the embeddings (and pooled output) with zeros: the "empty" conditioning SD3 and Turbo use."""

    CATEGORY = "advanced/conditioning"
    DISPLAY_NAME = "Conditioning Zero Out"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning

    def execute(self, ctx: RunContext) -> tuple:
        out = []
        for embeddings, options in self.conditioning:
            options = dict(options)
            if options.get("pooled_output") is not None:
                options["pooled_output"] = torch.zeros_like(options["pooled_output"])
            out.append([torch.zeros_like(embeddings), options])
        return (out,)


class ConditioningConcat(Node):
    """Appends the first entry of conditioning_from to the tokens of every entry of conditioning_to."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Concat)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning_to: Conditioning
    conditioning_from: Conditioning

    def execute(self, ctx: RunContext) -> tuple:
        if len(self.conditioning_from) > 1:
            log.warning("ConditioningConcat: conditioning_from has more than one entry; only the first is used")
        source = self.conditioning_from[0][0]
        out = [[torch.cat((emb, source.to(emb.dtype)), dim=1), dict(options)] for emb, options in self.conditioning_to]
        return (out,)


class ConditioningAverage(Node):
    """to * strength + from * (1 - strength), token by token (from is cut or zero-padded to to's length);
    pooled outputs are mixed the same way.

    ComfyUI names no display name for this node (its mapping's key has a stray space), so neither do we.
    """

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Average)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning_to: Conditioning
    conditioning_from: Conditioning
    conditioning_to_strength: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        if len(self.conditioning_from) > 1:
            log.warning("ConditioningAverage: conditioning_from has more than one entry; only the first is used")
        source, source_options = self.conditioning_from[0]
        pooled_from = source_options.get("pooled_output")
        weight = self.conditioning_to_strength
        out = []
        for target, options in self.conditioning_to:
            mixed_from = source[:, :target.shape[1]].to(target.dtype)
            if mixed_from.shape[1] < target.shape[1]:
                padding = torch.zeros((1, target.shape[1] - mixed_from.shape[1], target.shape[2]), dtype=target.dtype)
                mixed_from = torch.cat([mixed_from, padding], dim=1)
            options = dict(options)
            pooled_to = options.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                options["pooled_output"] = pooled_to * weight + pooled_from * (1.0 - weight)
            elif pooled_from is not None:
                options["pooled_output"] = pooled_from
            out.append([target * weight + mixed_from * (1.0 - weight), options])
        return (out,)


class ConditioningSetAreaStrength(Node):
    """Sets the weight of this conditioning when the sampler averages it with others."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Set Area Strength)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (set_values(self.conditioning, {"strength": self.strength}),)


class ConditioningSetArea(Node):
    """Restricts the conditioning to a rectangle of the image (in pixels, applied in 8-pixel latent cells): the
    sampler runs the model on that area and blends it in with feathered edges."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Set Area)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    width: int = Input(64, ge=64, le=MAX_RESOLUTION, step=8)
    height: int = Input(64, ge=64, le=MAX_RESOLUTION, step=8)
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        area = (self.height // 8, self.width // 8, self.y // 8, self.x // 8)
        return (set_values(self.conditioning, {"area": area, "strength": self.strength,
                                               "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(Node):
    """Restricts the conditioning to a rectangle given as fractions of the image's size."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Set Area with Percentage)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    width: float = Input(1.0, ge=0, le=1.0, step=0.01)
    height: float = Input(1.0, ge=0, le=1.0, step=0.01)
    x: float = Input(0, ge=0, le=1.0, step=0.01)
    y: float = Input(0, ge=0, le=1.0, step=0.01)
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        area = ("percentage", self.height, self.width, self.y, self.x)
        return (set_values(self.conditioning, {"area": area, "strength": self.strength,
                                               "set_area_to_bounds": False}),)


class ConditioningSetMask(Node):
    """Weights the conditioning per pixel by a mask (times strength); "mask bounds" also runs the model on the
    mask's bounding box only."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Set Mask)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    mask: Mask
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)
    set_cond_area: Literal["default", "mask bounds"] = Input("default")

    def execute(self, ctx: RunContext) -> tuple:
        mask = self.mask.unsqueeze(0) if self.mask.ndim < 3 else self.mask
        return (set_values(self.conditioning, {"mask": mask, "set_area_to_bounds": self.set_cond_area != "default",
                                               "mask_strength": self.strength}),)


class ConditioningSetTimestepRange(Node):
    """Makes the conditioning act only between two points of the schedule (0: the first step, 1: the end)."""

    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    start: float = Input(0.0, ge=0.0, le=1.0, step=0.001)
    end: float = Input(1.0, ge=0.0, le=1.0, step=0.001)

    def execute(self, ctx: RunContext) -> tuple:
        return (set_values(self.conditioning, {"start_percent": self.start, "end_percent": self.end}),)


class InpaintModelConditioning(Node):
    """Prepares inpainting: the image encoded as the latent (the mask as its noise mask), and the masked-out image
    (masked area grey) encoded into both conditionings for inpainting models."""

    CATEGORY = "conditioning/inpaint"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")

    positive: Conditioning
    negative: Conditioning
    vae: Vae
    pixels: Image
    mask: Mask
    noise_mask: bool = Input(True, tooltip="Add a noise mask to the latent so sampling will only happen within the "
                                           "mask. Might improve results or completely break things depending on the "
                                           "model.")

    def execute(self, ctx: RunContext) -> tuple:
        pixels = self.pixels
        mask = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1]).float()
        mask = F.interpolate(mask, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        height, width = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        mask = mask[:, :, top:top + height, left:left + width]
        cropped = crop_to_multiple(pixels)[..., :3]
        keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
        concat_latent = encode(self.vae, (cropped - 0.5) * keep + 0.5)
        latent: dict[str, Any] = {"samples": encode(self.vae, cropped)}
        if self.noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return (set_values(self.positive, values), set_values(self.negative, values), latent)
