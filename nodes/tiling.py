"""Running an image-to-image function tile by tile, as ComfyUI's `tiled_scale` does, so that results match it.

Tiles start every `tile - overlap` pixels along each side (the last one may be short), each output tile is weighted
by linear ramps `overlap * scale` output pixels wide on all four edges, and the weighted sum is divided by the
summed weights. Used by the upscale-model nodes (scale 2, 4, ...) and the tiled VAE nodes (scale 8 to decode, 1/8
to encode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one side; a side no longer than the tile has one tile."""
    if size <= tile:
        return [0]
    return [max(0, min(size - overlap, p)) for p in range(0, size - overlap, tile - overlap)]


def tile_count(height: int, width: int, tile_h: int, tile_w: int, overlap: int) -> int:
    """How many tiles one image of this size takes."""
    return len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap))


def tiled_scale(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile_h: int, tile_w: int,
                overlap: int, scale: float, out_channels: int,
                step: Callable[[], None] | None = None) -> torch.Tensor:
    """`function` applied to channel-first samples [B,C,H,W] tile by tile, blended; the output is [B, out_channels,
    round(H * scale), round(W * scale)] in float32 on the CPU. An image that fits one tile is done in one call."""
    batch, _, height, width = samples.shape
    out_h, out_w = round(height * scale), round(width * scale)
    output = torch.empty(batch, out_channels, out_h, out_w)
    feather = round(overlap * scale)
    for b in range(batch):
        image = samples[b:b + 1]
        if height <= tile_h and width <= tile_w:
            output[b:b + 1] = function(image).float().cpu()
            if step is not None:
                step()
            continue
        total = torch.zeros(1, out_channels, out_h, out_w)
        weights = torch.zeros_like(total)
        for top, left in itertools.product(tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)):
            result = function(image[:, :, top:top + tile_h, left:left + tile_w]).float().cpu()
            mask = torch.ones_like(result)
            for dim in (2, 3):
                if feather >= mask.shape[dim]:
                    continue
                for t in range(feather):
                    ramp = (t + 1) / feather
                    mask.narrow(dim, t, 1).mul_(ramp)
                    mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(ramp)
            row, col = round(top * scale), round(left * scale)
            total[:, :, row:row + result.shape[2], col:col + result.shape[3]] += result * mask
            weights[:, :, row:row + result.shape[2], col:col + result.shape[3]] += mask
            if step is not None:
                step()
        output[b:b + 1] = total / weights
    return output
