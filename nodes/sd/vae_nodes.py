"""VAE nodes: pixels to latents and back, and the inpainting encode that grows and applies a mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image, Latent, Mask, Vae
from latentgraph.nodes.sd.handles import VaeHandle

DECODE_BATCH = 4


@torch.no_grad()
def decode(vae: VaeHandle, samples: torch.Tensor) -> torch.Tensor:
    """Unscaled latents [B,C,h,w] to an IMAGE [B,H,W,3] in 0..1."""
    with vae.use() as model:
        images = []
        for chunk in samples.split(DECODE_BATCH):
            out = model.decode(chunk.to(model.device, model.dtype)).sample
            images.append((out.float() / 2 + 0.5).clamp(0, 1).cpu())
    return torch.cat(images).movedim(1, -1)


@torch.no_grad()
def encode(vae: VaeHandle, pixels: torch.Tensor) -> torch.Tensor:
    """An IMAGE [B,H,W,C] to unscaled latents (the mean of the encoder's distribution, as ComfyUI takes)."""
    with vae.use() as model:
        latents = []
        for chunk in pixels[..., :3].split(DECODE_BATCH):
            x = chunk.movedim(-1, 1).to(model.device, model.dtype) * 2 - 1
            latents.append(model.encode(x).latent_dist.mode().float().cpu())
    return torch.cat(latents)


def crop_to_multiple(pixels: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """The centre of an IMAGE whose sides are cut down to multiples of 8, as the VAE needs."""
    h, w = (pixels.shape[1] // multiple) * multiple, (pixels.shape[2] // multiple) * multiple
    top, left = (pixels.shape[1] % multiple) // 2, (pixels.shape[2] % multiple) // 2
    return pixels[:, top:top + h, left:left + w, :]


class VAEDecode(Node):
    """Decodes latent images back into pixel images."""

    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Decode"
    RETURN_TYPES = ("IMAGE",)

    samples: Latent
    vae: Vae

    def execute(self, ctx: RunContext) -> tuple:
        return (decode(self.vae, self.samples["samples"]),)


class VAEEncode(Node):
    """Encodes pixel images into latent images (sides cropped to multiples of 8)."""

    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Encode"
    RETURN_TYPES = ("LATENT",)

    pixels: Image
    vae: Vae

    def execute(self, ctx: RunContext) -> tuple:
        return ({"samples": encode(self.vae, crop_to_multiple(self.pixels))},)


class VAEEncodeForInpaint(Node):
    """Encodes an image for inpainting: the masked area is greyed out and becomes the latent's noise mask."""

    CATEGORY = "latent/inpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    RETURN_TYPES = ("LATENT",)

    pixels: Image
    vae: Vae
    mask: Mask
    grow_mask_by: int = Input(6, ge=0, le=64, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        pixels = self.pixels
        mask = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1]).float()
        mask = F.interpolate(mask, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        pixels = pixels[:, top:top + h, left:left + w, :3].clone()
        mask = mask[:, :, top:top + h, left:left + w]
        if self.grow_mask_by == 0:
            grown = mask
        else:
            kernel = torch.ones((1, 1, self.grow_mask_by, self.grow_mask_by))
            padding = math.ceil((self.grow_mask_by - 1) / 2)
            grown = F.conv2d(mask.round(), kernel, padding=padding).clamp(0, 1)[:, :, :h, :w]
        keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
        pixels = (pixels - 0.5) * keep + 0.5
        return ({"samples": encode(self.vae, pixels), "noise_mask": grown.round()},)
