"""Mask nodes: loading a mask from an image channel, converting between masks and images, and editing masks.

A MASK is a float tensor [B,H,W] (or [H,W]) in 0..1, 1 = the area to change. Names, inputs, defaults and the
arithmetic are ComfyUI's (nodes.py and comfy_extras/nodes_mask.py), so shared workflows give the same masks.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import Image, Mask
from latentgraph.nodes.image_nodes import _input_path, list_input_images, save_images
from PIL import Image as PILImage
from PIL import ImageOps

MAX_RESOLUTION = 16384


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """A mask as [B,H,W], whatever batch dimensions it came with."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


class LoadImageMask(Node):
    """Loads one channel of an image in the input folder as a mask; the alpha channel is inverted (1 - alpha)."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Load Image (as Mask)"
    RETURN_TYPES = ("MASK",)

    image: str = Input(choices=list_input_images, image_upload=True)
    channel: Literal["alpha", "red", "green", "blue"] = Input("alpha")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return hashlib.sha256(_input_path(env, inputs["image"]).read_bytes()).hexdigest()

    def execute(self, ctx: RunContext) -> tuple:
        with PILImage.open(_input_path(ctx.env, self.image)) as source:
            picture = ImageOps.exif_transpose(source)
            if picture.getbands() != ("R", "G", "B", "A"):
                if picture.mode == "I":  # 16-bit greyscale PNGs: ComfyUI maps 0..65535 onto 0..255 first
                    picture = picture.point(lambda v: v * (1 / 255))
                picture = picture.convert("RGBA")
            band = self.channel[0].upper()
            mask = torch.from_numpy(np.asarray(picture.getchannel(band), dtype=np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask
        return (mask.unsqueeze(0),)


class MaskToImage(Node):
    """A mask as a grey RGB image."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Convert Mask to Image"
    RETURN_TYPES = ("IMAGE",)

    mask: Mask

    def execute(self, ctx: RunContext) -> tuple:
        return (as_batch(self.mask).unsqueeze(-1).expand(-1, -1, -1, 3),)


class MaskPreview(Node):
    """Shows masks as grey images without keeping them (the temp folder), as PreviewImage shows images: a mask is
    checked by eye along a chain of mask nodes."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Preview Mask"
    OUTPUT_NODE = True

    mask: Mask
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        grey = as_batch(self.mask).unsqueeze(-1).expand(-1, -1, -1, 3)
        saved = save_images(grey, ctx.env.folders.temp_dir, f"mask_preview_{uuid.uuid4().hex[:8]}", "temp",
                            self.prompt, self.extra_pnginfo)
        return NodeOutput(ui={"images": saved})


class ImageToMask(Node):
    """One channel of an image as a mask."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Convert Image to Mask"
    RETURN_TYPES = ("MASK",)

    image: Image
    channel: Literal["red", "green", "blue", "alpha"] = Input("red")

    def execute(self, ctx: RunContext) -> tuple:
        index = ("red", "green", "blue", "alpha").index(self.channel)
        if index >= self.image.shape[-1]:
            raise ValueError(f"the image has {self.image.shape[-1]} channels and no {self.channel} channel")
        return (self.image[:, :, :, index],)


class SolidMask(Node):
    """A mask of one value everywhere."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Create Solid Mask"
    RETURN_TYPES = ("MASK",)

    value: float = Input(1.0, ge=0.0, le=1.0, step=0.01)
    width: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.full((1, self.height, self.width), self.value, dtype=torch.float32),)


class InvertMask(Node):
    """1 - mask."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Invert Mask"
    RETURN_TYPES = ("MASK",)

    mask: Mask

    def execute(self, ctx: RunContext) -> tuple:
        return (1.0 - self.mask,)


class CropMask(Node):
    """Cuts a rectangle out of a mask."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Crop Mask"
    RETURN_TYPES = ("MASK",)

    mask: Mask
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    width: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        return (as_batch(self.mask)[:, self.y:self.y + self.height, self.x:self.x + self.width],)


class ThresholdMask(Node):
    """1 where the mask is above the value, else 0."""

    CATEGORY = "mask"
    DISPLAY_NAME = "Threshold Mask"
    RETURN_TYPES = ("MASK",)

    mask: Mask
    value: float = Input(0.5, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return ((self.mask > self.value).float(),)


class MaskComposite(Node):
    """Combines `source` into `destination` at (x, y) by an operation; the result is clamped to 0..1.

    "and", "or" and "xor" treat values of 0.5 and above as set.
    """

    CATEGORY = "mask"
    DISPLAY_NAME = "Combine Masks"
    RETURN_TYPES = ("MASK",)

    destination: Mask
    source: Mask
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    operation: Literal["multiply", "add", "subtract", "and", "or", "xor"] = Input("multiply")

    def execute(self, ctx: RunContext) -> tuple:
        destination, source = as_batch(self.destination), as_batch(self.source)
        output = destination.clone()
        right = min(self.x + source.shape[-1], destination.shape[-1])
        bottom = min(self.y + source.shape[-2], destination.shape[-2])
        if right <= self.x or bottom <= self.y:
            return (output.clamp(0.0, 1.0),)
        here = destination[:, self.y:bottom, self.x:right]
        there = source[:, :bottom - self.y, :right - self.x]
        if self.operation == "multiply":
            result = here * there
        elif self.operation == "add":
            result = here + there
        elif self.operation == "subtract":
            result = here - there
        else:
            logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[self.operation]
            result = logic(here.round().bool(), there.round().bool()).float()
        output[:, self.y:bottom, self.x:right] = result
        return (output.clamp(0.0, 1.0),)


class FeatherMask(Node):
    """Fades a mask linearly towards zero over the given number of pixels at each edge.

    Kept exactly as ComfyUI computes it, quirk included: the right and bottom fades index from the end with
    `-i`, so their first step (i = 0) lands on the left column / top row, and the outermost right column / bottom
    row get weight 2/n instead of 1/n. Shared workflows therefore give the same masks here as in ComfyUI.
    """

    CATEGORY = "mask"
    DISPLAY_NAME = "Feather Mask"
    RETURN_TYPES = ("MASK",)

    mask: Mask
    left: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    top: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    right: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    bottom: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        output = as_batch(self.mask).clone()
        height, width = output.shape[-2], output.shape[-1]
        left, right = min(self.left, width), min(self.right, width)
        top, bottom = min(self.top, height), min(self.bottom, height)
        cols = torch.ones(width, dtype=output.dtype)
        rows = torch.ones(height, dtype=output.dtype)
        for i in range(left):
            cols[i] *= (i + 1) / left
        for i in range(right):
            cols[-i] *= (i + 1) / right
        for i in range(top):
            rows[i] *= (i + 1) / top
        for i in range(bottom):
            rows[-i] *= (i + 1) / bottom
        return (output * rows[:, None] * cols[None, :],)


def _dilate(masks: torch.Tensor, tapered: bool) -> torch.Tensor:
    """One step of grey dilation [B,H,W] with a 3x3 footprint (a cross when tapered); edges are not padded in."""
    padded = F.pad(masks.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    height, width = masks.shape[-2:]
    offsets = [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]
    if not tapered:
        offsets += [(0, 0), (0, 2), (2, 0), (2, 2)]
    shifted = torch.stack([padded[:, dy:dy + height, dx:dx + width] for dy, dx in offsets])
    return shifted.amax(dim=0)


class GrowMask(Node):
    """Grows (expand > 0) or shrinks (expand < 0) a mask by that many pixels, by grey dilation or erosion.

    Each step takes the maximum (or minimum) over a pixel's 3x3 neighbourhood, a cross when `tapered_corners`,
    which is what ComfyUI does with scipy's grey_dilation/grey_erosion.
    """

    CATEGORY = "mask"
    DISPLAY_NAME = "Grow Mask"
    RETURN_TYPES = ("MASK",)

    mask: Mask
    expand: int = Input(0, ge=-MAX_RESOLUTION, le=MAX_RESOLUTION, step=1)
    tapered_corners: bool = Input(True)

    def execute(self, ctx: RunContext) -> tuple:
        output = as_batch(self.mask).float()
        sign = 1.0 if self.expand >= 0 else -1.0
        output = output * sign
        for _ in range(abs(self.expand)):
            output = _dilate(output, self.tapered_corners)
        return (output * sign,)


class ImageColorToMask(Node):
    """Where the image has exactly the colour 0xRRGGBB (after rounding to 8 bits).

    The mask holds 255 there, not 1, as ComfyUI's does; nodes downstream clamp or threshold it.
    """

    CATEGORY = "mask"
    DISPLAY_NAME = "Convert Image Color to Mask"
    RETURN_TYPES = ("MASK",)

    image: Image
    color: int = Input(0, ge=0, le=0xFFFFFF, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        rgb = (self.image.clamp(0, 1.0) * 255.0).round().to(torch.int64)
        packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
        return (torch.where(packed == self.color, 255.0, 0.0).float(),)
