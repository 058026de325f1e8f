"""Tensor and pixel helpers shared by image and latent nodes (IMAGE is [B,H,W,C] float in 0..1)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

UpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CropMethod = Literal["disabled", "center"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a [H,W,3] float tensor."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One [H,W,C] image in 0..1 as an 8-bit PIL image, quantised as ComfyUI's SaveImage and lanczos do.

    ComfyUI truncates (`clip(255 * x, 0, 255).astype(uint8)`) rather than rounding; rounding made about half our
    pixels 1 higher than ComfyUI's for the same image, so files could not be compared byte for byte. 255 * x is
    computed in float32, as ComfyUI does on its float32 IMAGE tensors, so values on a boundary land the same way.
    """
    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array if array.shape[-1] != 1 else array[..., 0])


def _center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def target_size(old_w: int, old_h: int, width: int, height: int) -> tuple[int, int]:
    """ComfyUI's rule: a zero side keeps the aspect ratio of the other."""
    if width == 0 and height == 0:
        return old_w, old_h
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    return width, height


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resizes channel-first samples [B,C,H,W] (images or latents) the way ComfyUI's common_upscale does."""
    width, height = target_size(samples.shape[-1], samples.shape[-2], width, height)
    if crop == "center":
        samples = _center_crop(samples, width, height)
    if method == "lanczos":
        pils = [tensor_to_pil(s.movedim(0, -1).clamp(0, 1)) for s in samples]
        resized = [pil_to_tensor(p.resize((width, height), Image.Resampling.LANCZOS)) for p in pils]
        return torch.stack(resized).movedim(-1, 1)[:, : samples.shape[1]]
    mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}[method]
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(samples.float(), size=(height, width), mode=mode, **align)


def upscale_images(images: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"):
    """`upscale` for IMAGE tensors [B,H,W,C]."""
    return upscale(images.movedim(-1, 1), width, height, method, crop).movedim(1, -1).clamp(0, 1)
