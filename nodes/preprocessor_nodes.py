"""Image preprocessors for ControlNet hints that need no downloaded weights: Canny, as ComfyUI's.

ComfyUI's Canny (comfy_extras/nodes_canny.py) calls kornia's `canny` with its default kernel (5x5 Gaussian, sigma 1)
and returns the edge map as an RGB image. This is the same algorithm in plain torch, so kornia is not needed:
grayscale (ITU-R 601 weights), Gaussian blur with reflected borders, unnormalised Sobel gradients with replicated
borders, magnitude sqrt(gx^2 + gy^2 + eps), non-maximum suppression along the gradient direction rounded to 45
degrees, double threshold (weak 0.5, strong 1) and hysteresis until no weak edge touching a strong one is left.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image

KERNEL_SIZE = 5
SIGMA = 1.0
EPS = 1e-6
GRAY = (0.299, 0.587, 0.114)
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
# The neighbour in each of the 8 directions (0, 45, ..., 315 degrees, y pointing down), as (row, column) in 3x3.
NEIGHBOURS = ((1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0), (0, 1), (0, 2))


def _direction_kernels(centre: float) -> torch.Tensor:
    """8 3x3 kernels: `centre` at the middle and -1 (or +1 when centre is 0) at the neighbour of each direction."""
    kernels = torch.zeros(8, 1, 3, 3)
    for d, (row, col) in enumerate(NEIGHBOURS):
        kernels[d, 0, 1, 1] = centre
        kernels[d, 0, row, col] = -1.0 if centre else 1.0
    return kernels


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def canny(image: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """The edge map [B, 1, H, W] (0 or 1) of channel-first images [B, C, H, W] in 0..1."""
    x = image.float()
    if x.shape[1] == 3:
        x = sum(w * x[:, c:c + 1] for c, w in enumerate(GRAY))
    elif x.shape[1] != 1:
        raise ValueError(f"Canny takes grayscale or RGB images, not {x.shape[1]} channels")
    g = _gaussian(KERNEL_SIZE, SIGMA).to(x.device)
    pad = KERNEL_SIZE // 2
    x = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), (g[:, None] * g[None, :])[None, None])
    sobel_x = torch.tensor(SOBEL_X, device=x.device)
    sobel = torch.stack([sobel_x, sobel_x.t()])[:, None]
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), sobel)
    gx, gy = gradients[:, :1], gradients[:, 1:]
    magnitude = torch.sqrt(gx * gx + gy * gy + EPS)
    angle = torch.round(torch.atan2(gy, gx) * (180.0 / math.pi) / 45.0) * 45.0
    differences = F.conv2d(magnitude, _direction_kernels(1.0).to(x.device), padding=1)
    forward = ((angle / 45.0) % 8).long()
    backward = ((angle / 45.0 + 4) % 8).long()
    is_max = torch.minimum(differences.gather(1, forward), differences.gather(1, backward)) > 0.0
    magnitude = magnitude * is_max
    edges = (magnitude > low_threshold).float() * 0.5 + (magnitude > high_threshold).float() * 0.5
    neighbours = _direction_kernels(0.0).to(x.device)
    while True:
        weak, strong = (edges == 0.5).float(), (edges == 1.0).float()
        touches = (F.conv2d(edges, neighbours, padding=1) == 1).any(dim=1, keepdim=True).float()
        grown = touches * weak + strong
        updated = grown + (grown == 0).float() * weak * 0.5
        if torch.equal(updated, edges):
            return grown
        edges = updated


class Canny(Node):
    """Canny edge detection, the hint of Canny ControlNets: white edges on black, as an RGB image."""

    CATEGORY = "image/preprocessors"
    DISPLAY_NAME = "Detect Edges (Canny)"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    low_threshold: float = Input(0.4, ge=0.01, le=0.99, step=0.01)
    high_threshold: float = Input(0.8, ge=0.01, le=0.99, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        edges = canny(self.image.movedim(-1, 1), self.low_threshold, self.high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)
