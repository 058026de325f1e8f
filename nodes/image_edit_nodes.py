"""Image nodes that need no model: scaling by a factor, cropping, padding for outpainting, compositing, blending,
blurring, sharpening and plain-colour images.

IMAGE is [B,H,W,C] float in 0..1. Names, inputs, defaults, ranges and arithmetic are ComfyUI's (nodes.py,
comfy_extras/nodes_images.py, nodes_mask.py and nodes_post_processing.py), so that a shared workflow gives the same
pixels here as there: the Gaussian kernels, for one, are laid on [-1, 1] whatever their size, as ComfyUI's are.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image, Mask
from latentgraph.nodes.imageops import UpscaleMethod, upscale, upscale_images
from latentgraph.nodes.latent_op_nodes import composite

MAX_RESOLUTION = 16384
BlendMode = Literal["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


class ImageScaleBy(Node):
    """Resizes images by a factor."""

    CATEGORY = "image/upscaling"
    DISPLAY_NAME = "Upscale Image By"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    upscale_method: UpscaleMethod = Input("nearest-exact")
    scale_by: float = Input(1.0, ge=0.01, le=8.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        width = round(self.image.shape[2] * self.scale_by)
        height = round(self.image.shape[1] * self.scale_by)
        return (upscale_images(self.image, max(1, width), max(1, height), self.upscale_method),)


class ImageCrop(Node):
    """Cuts a rectangle out of images; a corner past the edge moves onto the last row or column."""

    CATEGORY = "image/transform"
    DISPLAY_NAME = "Crop Image (DEPRECATED)"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    width: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        x = min(self.x, self.image.shape[2] - 1)
        y = min(self.y, self.image.shape[1] - 1)
        return (self.image[:, y:y + self.height, x:x + self.width, :],)


def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int,
                  feathering: int) -> torch.Tensor:
    """The mask over the padded canvas: 1 on the new border, and inside the old image, near a padded side,
    ((feathering - d) / feathering)^2 at distance d < feathering from that side (ComfyUI's rule)."""
    mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
    inner = torch.zeros((height, width), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        i = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
        j = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
        far_h, far_w = torch.full_like(i, float(height)), torch.full_like(j, float(width))
        distance = torch.minimum(
            torch.minimum(i if top else far_h, height - i if bottom else far_h),
            torch.minimum(j if left else far_w, width - j if right else far_w),
        )
        ramp = ((feathering - distance) / feathering) ** 2
        inner = torch.where(distance < feathering, ramp, inner)
    mask[top:top + height, left:left + width] = inner
    return mask


class ImagePadForOutpaint(Node):
    """Pads images with grey (0.5) for outpainting, and returns the mask of what to paint (feathered inwards)."""

    CATEGORY = "image"
    DISPLAY_NAME = "Pad Image for Outpainting"
    RETURN_TYPES = ("IMAGE", "MASK")

    image: Image
    left: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    top: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    right: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    bottom: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    feathering: int = Input(40, ge=0, le=MAX_RESOLUTION, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        batch, height, width, channels = self.image.shape
        canvas = torch.full((batch, height + self.top + self.bottom, width + self.left + self.right, channels), 0.5,
                            dtype=torch.float32)
        canvas[:, self.top:self.top + height, self.left:self.left + width, :] = self.image
        mask = outpaint_mask(height, width, self.left, self.top, self.right, self.bottom, self.feathering)
        return (canvas, mask)


def _match_alpha(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brings the source to the destination's channel count: extra channels dropped, a missing alpha opaque."""
    if source.shape[-1] > destination.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif source.shape[-1] < destination.shape[-1]:
        source = F.pad(source, (0, destination.shape[-1] - source.shape[-1]), value=1.0)
    return destination, source


class ImageCompositeMasked(Node):
    """Pastes one image into another at (x, y), through an optional mask (1 = source)."""

    CATEGORY = "image"
    DISPLAY_NAME = "Image Composite Masked"
    RETURN_TYPES = ("IMAGE",)

    destination: Image
    source: Image
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=1)
    resize_source: bool = Input(False)
    mask: Mask | None = None

    def execute(self, ctx: RunContext) -> tuple:
        destination, source = _match_alpha(self.destination, self.source)
        result = composite(destination.movedim(-1, 1), source.movedim(-1, 1), self.x, self.y, self.mask, 1,
                           self.resize_source)
        return (result.movedim(1, -1),)


def blend(first: torch.Tensor, second: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend of `second` over `first` by one of ComfyUI's modes (before mixing by the blend factor)."""
    if mode == "normal":
        return second
    if mode == "multiply":
        return first * second
    if mode == "screen":
        return 1 - (1 - first) * (1 - second)
    if mode == "overlay":
        return torch.where(first <= 0.5, 2 * first * second, 1 - 2 * (1 - first) * (1 - second))
    if mode == "soft_light":
        lifted = torch.where(first <= 0.25, ((16 * first - 12) * first + 4) * first, torch.sqrt(first))
        return torch.where(second <= 0.5, first - (1 - 2 * second) * first * (1 - first),
                           first + (2 * second - 1) * (lifted - first))
    if mode == "difference":
        return first - second
    raise ValueError(f"unsupported blend mode {mode!r}")


class ImageBlend(Node):
    """Blends image2 over image1 by a mode, mixed in by blend_factor; image2 is resized to image1 if needed."""

    CATEGORY = "image/postprocessing"
    DISPLAY_NAME = "Blend Images"
    RETURN_TYPES = ("IMAGE",)

    image1: Image
    image2: Image
    blend_factor: float = Input(0.5, ge=0.0, le=1.0, step=0.01)
    blend_mode: BlendMode = Input("normal")

    def execute(self, ctx: RunContext) -> tuple:
        first, second = self.image1, self.image2.to(self.image1.device)
        if first.shape != second.shape:
            second = upscale(second.movedim(-1, 1), first.shape[2], first.shape[1], "bicubic", "center").movedim(1, -1)
        blended = blend(first, second, self.blend_mode)
        return ((first * (1 - self.blend_factor) + blended * self.blend_factor).clamp(0, 1),)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """ComfyUI's size x size Gaussian, laid on [-1, 1] in both directions (not on pixel units), summing to 1."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    weights = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def filter_image(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolves each channel of [B,H,W,C] images with a square kernel over reflect-padded edges."""
    radius = kernel.shape[-1] // 2
    channels = image.shape[-1]
    weight = kernel.to(image.dtype).expand(channels, 1, *kernel.shape)
    padded = F.pad(image.movedim(-1, 1), (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, weight, groups=channels).movedim(1, -1)


class ImageBlur(Node):
    """Gaussian blur over a (2 * blur_radius + 1) square."""

    CATEGORY = "image/postprocessing"
    DISPLAY_NAME = "Blur Image"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    blur_radius: int = Input(1, ge=1, le=31, step=1)
    sigma: float = Input(1.0, ge=0.1, le=10.0, step=0.1)

    def execute(self, ctx: RunContext) -> tuple:
        return (filter_image(self.image, gaussian_kernel(self.blur_radius * 2 + 1, self.sigma)),)


class ImageSharpen(Node):
    """Unsharp masking: the image minus alpha * 10 times its Gaussian blur, renormalised, clamped to 0..1."""

    CATEGORY = "image/postprocessing"
    DISPLAY_NAME = "Sharpen Image"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    sharpen_radius: int = Input(1, ge=1, le=31, step=1)
    sigma: float = Input(1.0, ge=0.1, le=10.0, step=0.01)
    alpha: float = Input(1.0, ge=0.0, le=5.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        size = self.sharpen_radius * 2 + 1
        kernel = gaussian_kernel(size, self.sigma) * -(self.alpha * 10)
        kernel[size // 2, size // 2] = kernel[size // 2, size // 2] - kernel.sum() + 1.0
        return (filter_image(self.image, kernel).clamp(0, 1),)


class EmptyImage(Node):
    """A batch of images of one colour, given as 0xRRGGBB."""

    CATEGORY = "image"
    DISPLAY_NAME = "Empty Image"
    RETURN_TYPES = ("IMAGE",)

    width: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=1, le=MAX_RESOLUTION, step=1)
    batch_size: int = Input(1, ge=1, le=4096)
    color: int = Input(0, ge=0, le=0xFFFFFF, step=1, display="color")

    def execute(self, ctx: RunContext) -> tuple:
        rgb = [((self.color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        return (torch.tensor(rgb, dtype=torch.float32).expand(self.batch_size, self.height, self.width, 3).clone(),)


class RepeatImageBatch(Node):
    """Repeats an image batch `amount` times."""

    CATEGORY = "image/batch"
    DISPLAY_NAME = "Repeat Image Batch"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    amount: int = Input(1, ge=1, le=4096)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.image.repeat(self.amount, 1, 1, 1),)


class ImageFromBatch(Node):
    """Takes `length` images from a batch starting at `batch_index` (both clamped to the batch)."""

    CATEGORY = "image/batch"
    DISPLAY_NAME = "Get Image from Batch"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    batch_index: int = Input(0, ge=0, le=4095)
    length: int = Input(1, ge=1, le=4096)

    def execute(self, ctx: RunContext) -> tuple:
        start = min(self.image.shape[0] - 1, self.batch_index)
        length = min(self.image.shape[0] - start, self.length)
        return (self.image[start:start + length].clone(),)
