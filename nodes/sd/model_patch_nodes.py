"""Model patches with ComfyUI's names, inputs and formulas: FreeU, FreeU_V2 (UNet skip/backbone rescaling) and
RescaleCFG (CFG rescaled towards the conditional prediction's spread).

A patch never touches the loaded weights: the node returns a MODEL handle that carries the patch
(`ModelHandle.with_model_patch`), so its cache key differs and the original handle, used by other branches of the
graph, samples as before. While the patched handle is in use, a FreeU patch hooks the UNet's up blocks (removed when
the run ends); RescaleCFG gives the sampler a CFG function (ComfyUI's sampler_cfg_function), which guided() in
nodes/sd/sampling.py calls with ComfyUI's arguments.

FreeU follows ComfyUI's output_block_patch, not diffusers' enable_freeu: ComfyUI picks the scales by the channel
count of the hidden state entering each up-block layer (4x the first block's channels: b1/s1, 2x: b2/s2), diffusers
by the up block's index, which differs for the layers where the channel count changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Model

FOURIER_THRESHOLD = 1  # half-size of the low-frequency square FreeU scales, as in ComfyUI


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scales the centred low-frequency square (2 * threshold wide) of each channel's 2-D spectrum by `scale`."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    mask = torch.ones(spectrum.shape, device=x.device)
    row, col = height // 2, width // 2
    mask[..., row - threshold:row + threshold, col - threshold:col + threshold] = scale
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(x.dtype)


def freeu_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    """FreeU (v1): the first half of the backbone's channels times b."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * b, h[:, half:]], dim=1)


def freeu_v2_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    """FreeU_V2: the first half of the channels times 1 + (b - 1) * the channel mean min-max normalised per image."""
    mean = h.mean(1, keepdim=True)
    flat = mean.view(mean.shape[0], -1)
    low = flat.min(dim=-1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=-1).values.view(-1, 1, 1, 1)
    mean = (mean - low) / (high - low)
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * ((b - 1) * mean + 1), h[:, half:]], dim=1)


def _up_layers(net: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, int]]:
    """Each up-block layer (resnet) of a diffusers UNet with the channel count of the hidden state it receives
    before the skip connection is concatenated (the middle block's output for the first)."""
    config = getattr(net, "config", None)
    blocks = getattr(net, "up_blocks", None)
    if config is None or blocks is None or "block_out_channels" not in config:
        return
    channels = int(config["block_out_channels"][-1])
    for block in blocks:
        for resnet in getattr(block, "resnets", []):
            yield resnet, channels
            channels = int(resnet.out_channels)


@dataclass(frozen=True)
class FreeUPatch:
    """ComfyUI's FreeU output-block patch: where the hidden state entering an up-block layer has 4x (2x) the UNet's
    base channels, its backbone is scaled with b1 (b2) and the skip connection's low frequencies with s1 (s2)."""

    b1: float
    b2: float
    s1: float
    s2: float
    version: int = 1

    cfg_function = None

    def patch(self, h: torch.Tensor, skip: torch.Tensor, base_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        scales = {base_channels * 4: (self.b1, self.s1), base_channels * 2: (self.b2, self.s2)}
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        backbone = freeu_backbone if self.version == 1 else freeu_v2_backbone
        return backbone(h, scale[0]), fourier_filter(skip, FOURIER_THRESHOLD, scale[1])

    @contextmanager
    def attached(self, net: torch.nn.Module) -> Iterator[None]:
        """Hooks every up-block layer of `net` while the context lasts (a model without UNet up blocks, such as
        SD3's MMDiT, is left as it is, as in ComfyUI)."""
        config = getattr(net, "config", None)
        base = int(config["block_out_channels"][0]) if config is not None and "block_out_channels" in config else 0
        handles = []
        for layer, channels in _up_layers(net):
            def hook(module: torch.nn.Module, args: tuple[Any, ...], channels: int = channels) -> tuple[Any, ...]:
                joined = args[0]
                h, skip = self.patch(joined[:, :channels], joined[:, channels:], base)
                return (torch.cat([h, skip], dim=1), *args[1:])
            handles.append(layer.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def rescale_cfg(args: dict[str, Any], multiplier: float) -> torch.Tensor:
    """ComfyUI's RescaleCFG on its sampler_cfg_function arguments (cond/uncond are x - clean estimates): CFG on
    v-predictions, rescaled to the conditional prediction's standard deviation, mixed by `multiplier`; returns
    x - the resulting clean estimate."""
    cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
    sigma = args["sigma"].view(-1, *([1] * (cond.ndim - 1)))
    x_orig = args["input"]
    x = x_orig / (sigma * sigma + 1.0)
    cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
    uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
    x_cfg = uncond + scale * (cond - uncond)
    ro_pos = torch.std(cond, dim=tuple(range(1, cond.ndim)), keepdim=True)
    ro_cfg = torch.std(x_cfg, dim=tuple(range(1, cond.ndim)), keepdim=True)
    x_final = multiplier * x_cfg * (ro_pos / ro_cfg) + (1.0 - multiplier) * x_cfg
    return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)


@dataclass(frozen=True)
class RescaleCfgPatch:
    """The sampler's CFG function for RescaleCFG."""

    multiplier: float

    @contextmanager
    def attached(self, net: torch.nn.Module) -> Iterator[None]:
        yield

    def cfg_function(self, args: dict[str, Any]) -> torch.Tensor:
        return rescale_cfg(args, self.multiplier)


def _patched(model: Any, patch: Any, node: str) -> Any:
    if not hasattr(model, "with_model_patch"):
        raise ValueError(f"{node} cannot patch this MODEL ({type(model).__name__})")
    return model.with_model_patch(patch)


class FreeU(Node):
    """FreeU: strengthens the UNet's backbone features (b1, b2) and damps the skip connections' low frequencies
    (s1, s2) in the decoder, which often sharpens detail without retraining."""

    CATEGORY = "model_patches/unet"
    RETURN_TYPES = ("MODEL",)

    model: Model
    b1: float = Input(1.1, ge=0.0, le=10.0, step=0.01)
    b2: float = Input(1.2, ge=0.0, le=10.0, step=0.01)
    s1: float = Input(0.9, ge=0.0, le=10.0, step=0.01)
    s2: float = Input(0.2, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (_patched(self.model, FreeUPatch(self.b1, self.b2, self.s1, self.s2, version=1), "FreeU"),)


class FreeU_V2(Node):  # noqa: N801 - ComfyUI's node name
    """FreeU v2: the backbone scaling follows each image's normalised mean activation."""

    CATEGORY = "model_patches/unet"
    RETURN_TYPES = ("MODEL",)

    model: Model
    b1: float = Input(1.3, ge=0.0, le=10.0, step=0.01)
    b2: float = Input(1.4, ge=0.0, le=10.0, step=0.01)
    s1: float = Input(0.9, ge=0.0, le=10.0, step=0.01)
    s2: float = Input(0.2, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (_patched(self.model, FreeUPatch(self.b1, self.b2, self.s1, self.s2, version=2), "FreeU_V2"),)


class RescaleCFG(Node):
    """Rescales the CFG result to the spread of the conditional prediction (for v-prediction and zero-SNR models,
    which over-saturate at high CFG); multiplier 0 is plain CFG."""

    CATEGORY = "advanced/model"
    RETURN_TYPES = ("MODEL",)

    model: Model
    multiplier: float = Input(0.7, ge=0.0, le=1.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        return (_patched(self.model, RescaleCfgPatch(self.multiplier), "RescaleCFG"),)
