"""Tiled VAE decoding and encoding, for images too large to pass through the VAE at once.

As in ComfyUI, decoding runs three tilings, (tile/2 x 2*tile), (2*tile x tile/2) and (tile x tile) (width x height,
in latent pixels), and averages them, so that no seam falls in the same place twice; encoding does the same with
pixel tiles. Tiles overlap by `overlap` pixels and are blended as in nodes/tiling.py. The temporal inputs exist for
ComfyUI's video VAEs and do nothing for the image VAEs of these families; they are accepted so that workflows saved
by current ComfyUI convert unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image, Latent, Vae
from latentgraph.nodes.sd.handles import VaeHandle
from latentgraph.nodes.sd.vae_nodes import crop_to_multiple
from latentgraph.nodes.tiling import tile_count, tiled_scale

VAE_FACTOR = 8
TEMPORAL_TIP = "Only used for video VAEs: Amount of frames to {} at a time."


def _tilings(tile: int) -> list[tuple[int, int]]:
    """(tile_h, tile_w) of the three passes, in ComfyUI's order for decoding."""
    return [(tile * 2, tile // 2), (tile // 2, tile * 2), (tile, tile)]


@torch.no_grad()
def decode_tiled(vae: VaeHandle, samples: torch.Tensor, tile: int, overlap: int,
                 step: Callable[[], None] | None = None) -> torch.Tensor:
    """Unscaled latents [B,C,h,w] to an IMAGE [B,H,W,3]; `tile` and `overlap` are in latent pixels."""
    with vae.use() as model:

        def run(piece: torch.Tensor) -> torch.Tensor:
            return model.decode(piece.to(model.device, model.dtype)).sample

        passes = [tiled_scale(samples.float(), run, tile_h, tile_w, overlap, VAE_FACTOR, 3, step)
                  for tile_h, tile_w in _tilings(tile)]
    return (sum(passes) / 3.0 / 2 + 0.5).clamp(0, 1).movedim(1, -1)


@torch.no_grad()
def encode_tiled(vae: VaeHandle, pixels: torch.Tensor, tile: int, overlap: int,
                 step: Callable[[], None] | None = None) -> torch.Tensor:
    """An IMAGE [B,H,W,C] to unscaled latents; `tile` and `overlap` are in pixels."""
    images = pixels[..., :3].movedim(-1, 1).float()
    with vae.use() as model:

        def run(piece: torch.Tensor) -> torch.Tensor:
            return model.encode(piece.to(model.device, model.dtype) * 2 - 1).latent_dist.mode()

        channels = int(model.config.latent_channels)
        # ComfyUI's encode order: square tiles first, then wide, then tall
        passes = [tiled_scale(images, run, tile_h, tile_w, overlap, 1 / VAE_FACTOR, channels, step)
                  for tile_h, tile_w in (_tilings(tile)[2], _tilings(tile)[1], _tilings(tile)[0])]
    return sum(passes) / 3.0


def _progress(ctx: RunContext, total: int) -> Callable[[], None]:
    done = [0]

    def step() -> None:
        ctx.check_interrupt()
        done[0] += 1
        ctx.progress(done[0], total)

    return step


class VAEDecodeTiled(Node):
    """Decodes latents in overlapping tiles, for images too large to decode at once."""

    CATEGORY = "_for_testing"
    DISPLAY_NAME = "VAE Decode (Tiled)"
    RETURN_TYPES = ("IMAGE",)

    samples: Latent
    vae: Vae
    tile_size: int = Input(512, ge=64, le=4096, step=32)
    overlap: int = Input(64, ge=0, le=4096, step=32)
    temporal_size: int = Input(64, ge=8, le=4096, step=4, tooltip=TEMPORAL_TIP.format("decode"))
    temporal_overlap: int = Input(8, ge=4, le=4096, step=4, tooltip="Only used for video VAEs: Amount of frames to "
                                                                       "overlap.")

    def execute(self, ctx: RunContext) -> tuple:
        overlap = self.overlap if self.tile_size >= self.overlap * 4 else self.tile_size // 4
        tile, overlap = self.tile_size // VAE_FACTOR, overlap // VAE_FACTOR
        samples = self.samples["samples"]
        total = samples.shape[0] * sum(tile_count(samples.shape[2], samples.shape[3], h, w, overlap)
                                       for h, w in _tilings(tile))
        return (decode_tiled(self.vae, samples, tile, overlap, _progress(ctx, total)),)


class VAEEncodeTiled(Node):
    """Encodes images in overlapping tiles, for images too large to encode at once."""

    CATEGORY = "_for_testing"
    DISPLAY_NAME = "VAE Encode (Tiled)"
    RETURN_TYPES = ("LATENT",)

    pixels: Image
    vae: Vae
    tile_size: int = Input(512, ge=64, le=4096, step=64)
    overlap: int = Input(64, ge=0, le=4096, step=32)
    temporal_size: int = Input(64, ge=8, le=4096, step=4, tooltip=TEMPORAL_TIP.format("encode"))
    temporal_overlap: int = Input(8, ge=4, le=4096, step=4, tooltip="Only used for video VAEs: Amount of frames to "
                                                                       "overlap.")

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """The narrow passes use tiles of tile_size / 2, which must be wider than the overlap."""
        tile, overlap = inputs.get("tile_size", 512), inputs.get("overlap", 64)
        if isinstance(tile, int) and isinstance(overlap, int) and overlap >= tile // 2:
            return [("overlap", f"overlap {overlap} must be less than half of tile_size {tile}")]
        return []

    def execute(self, ctx: RunContext) -> tuple:
        pixels = crop_to_multiple(self.pixels, VAE_FACTOR)
        total = pixels.shape[0] * sum(tile_count(pixels.shape[1], pixels.shape[2], h, w, self.overlap)
                                      for h, w in _tilings(self.tile_size))
        return ({"samples": encode_tiled(self.vae, pixels, self.tile_size, self.overlap, _progress(ctx, total))},)
