"""What a model family is: the protocol every family implements, and a base class with the common defaults.

A family knows everything particular to one kind of checkpoint: how to recognise its files from tensor names and
shapes (or a diffusers folder), its shipped configs, how to build and load each component, the MODEL/CLIP/VAE
handles it gives, its text conditioning (encoders, pooled outputs, time ids), the denoiser call, its noise space
(eps, v, flow), latent channels, scale and shift, the CLIP pad token and layer numbering, and default sampling.
The rest of the runtime asks the family; nothing outside a family's module compares family names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from latentgraph.nodes.sd.noise_space import NoiseSpace, discrete_space

if TYPE_CHECKING:
    from latentgraph.engine.context import Environment
    from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile


@runtime_checkable
class Family(Protocol):
    """A model family, registered by `name` (the value of CheckpointInfo.family)."""

    name: str
    label: str  # for people: "SD1.x", "SDXL refiner"
    priority: int  # recognition order, lowest first (fallback readers last)
    latent_channels: int
    pad_token: str | None  # the CLIP tokenizer's pad token (None: <|endoftext|>)
    default_sampling: Mapping[str, Any]  # width, height, steps, cfg, sampler_name, scheduler

    def config(self, component: str) -> dict[str, Any]:
        """A fresh copy of the family's shipped config for a component (unet, vae, text_encoder, scheduler...)."""
        ...

    def inspect(self, path: Path, tensors: TensorFile | None = None) -> CheckpointInfo | None:
        """The checkpoint's facts when `path` (a file with its header read into `tensors`, or a diffusers folder,
        `tensors` None) is of this family, else None; raises UnknownCheckpoint when it is of this family but cannot
        be read."""
        ...

    def load_component(self, info: CheckpointInfo, component: str, dtype: torch.dtype) -> torch.nn.Module:
        """One component, built on the CPU in `dtype`, in eval mode."""
        ...

    def handles(self, info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
        """MODEL, CLIP and VAE handles for CheckpointLoaderSimple (VAE None when absent and not required)."""
        ...

    def diffusion_model(self, path: Path, env: Environment) -> Any | None:
        """A MODEL handle for a file holding the denoiser alone (UNETLoader), or None when it is not this family's."""
        ...

    def denoise(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
        """The network's output for `x` = len(options) groups of equal batch, group i conditioned by context and
        options[i] (pooled embeddings, time ids...); negative[i] marks the unconditional groups."""
        ...

    def noise_space(self, model: Any, sampler_name: str, scheduler_name: str) -> NoiseSpace:
        """The denoising loop's strategy for this MODEL handle."""
        ...

    def clip_layer(self, layer: int) -> int:
        """The loaded text encoder's layer that ComfyUI's `stop_at_clip_layer` numbering means."""
        ...


def pooled_output(options: Mapping[str, Any], family: str) -> torch.Tensor:
    """The pooled text embedding a conditioning carries, which SDXL's and SD3's denoisers need."""
    pooled = options.get("pooled_output")
    if pooled is None:
        raise ValueError(f"a {family} model needs conditioning with a pooled text embedding: encode the prompt with "
                         f"this model's CLIP (CLIPTextEncode, CLIPTextEncodeSDXL or its refiner variant)")
    return pooled


@cache
def _config_text(folder: Path, component: str) -> str:
    return (folder / f"{component}.json").read_text()


class BaseFamily:
    """Defaults for a UNet family with one CLIP text encoder, eps/v prediction and 4 latent channels; a family
    overrides what differs. `config_dir` holds the shipped configs (one JSON per component)."""

    name = ""
    label = ""
    priority = 50
    latent_channels = 4
    pad_token: str | None = None
    config_dir: Path = Path()
    default_sampling: Mapping[str, Any] = {"width": 512, "height": 512, "steps": 20, "cfg": 7.0,
                                           "sampler_name": "euler", "scheduler": "normal"}

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    def config(self, component: str) -> dict[str, Any]:
        return json.loads(_config_text(self.config_dir, component))

    def inspect(self, path: Path, tensors: TensorFile | None = None) -> CheckpointInfo | None:
        return None

    def load_component(self, info: CheckpointInfo, component: str, dtype: torch.dtype) -> torch.nn.Module:
        raise NotImplementedError(f"{self.label} cannot load {component}")

    def handles(self, info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
        raise NotImplementedError(f"{self.label} gives no handles")

    def diffusion_model(self, path: Path, env: Environment) -> Any | None:
        return None

    def denoise(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
        return net(x, t, encoder_hidden_states=context).sample.float()

    def noise_space(self, model: Any, sampler_name: str, scheduler_name: str) -> NoiseSpace:
        return discrete_space(model.prediction_type)(sampler_name, scheduler_name, model.scheduler_config,
                                                     model.latent_scale)

    def clip_layer(self, layer: int) -> int:
        return layer
