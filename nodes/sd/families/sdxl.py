"""SDXL base: a UNet with text-time embeddings (pooled bigG output + size/crop time ids), CLIP-L and OpenCLIP bigG
used together, eps prediction, 4 channels at 1024x1024. Stability's single-file layout is read and written by
nodes/sd/sdxl.py; diffusers folders by nodes/sd/parts.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile
from latentgraph.nodes.sd.detect import CONFIG_DIR, UnknownCheckpoint
from latentgraph.nodes.sd.family import BaseFamily, pooled_output
from latentgraph.nodes.sd.handles import ModelHandle, VaeHandle
from latentgraph.nodes.sd.multiclip import sdxl_conditioning
from latentgraph.nodes.sd.parts import MultiClipHandle, folder_info, load_folder_component, part
from latentgraph.nodes.sd.sdxl import inspect_sdxl, is_sdxl, load_sdxl_component, sdxl_folder_is_refiner
from latentgraph.nodes.sd.services import model_manager


class SDXL(BaseFamily):
    name = "sdxl"
    label = "SDXL base"
    priority = 20
    refiner = False
    config_dir = CONFIG_DIR / "sdxl_base"
    roles: tuple[tuple[str, str], ...] = (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"))
    text_roles = ("clip_l", "clip_g")
    clip_loaders = "DualCLIPLoader (type sdxl)"
    default_sampling = {"width": 1024, "height": 1024, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                        "scheduler": "normal"}

    def inspect(self, path: Path, tensors: TensorFile | None = None) -> CheckpointInfo | None:
        if path.is_dir():
            if sdxl_folder_is_refiner(path) is not self.refiner:
                return None
            return folder_info(path, self.name, BASE.config("scheduler"))
        if tensors is None or not is_sdxl(tensors.shapes):
            return None
        info = inspect_sdxl(path, tensors)
        return info if info.family == self.name else None

    def load_component(self, info: CheckpointInfo, component: str, dtype: torch.dtype) -> torch.nn.Module:
        if info.kind == "diffusers":
            return load_folder_component(info, component, dtype, projection=component == "text_encoder_2")
        return load_sdxl_component(info, component, dtype)

    def handles(self, info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
        manager = model_manager(env)
        path, identity = info.path, info.identity
        if "vae" not in info.configs and require_vae:
            raise UnknownCheckpoint(f"{path.name} has no VAE; load one with VAELoader")
        vae_config = info.configs.get("vae") or BASE.config("vae")
        vae = VaeHandle(part(path, identity, "vae", manager, self), env) if "vae" in info.configs else None
        model = ModelHandle(part(path, identity, "unet", manager, self), env, self,
                            scheduler_config=dict(info.configs["scheduler"]),
                            latent_scale=float(vae_config.get("scaling_factor", 1.0)))
        roles = [(role, c) for role, c in self.roles if c in info.configs]
        clip = MultiClipHandle(tuple((role, part(path, identity, c, manager, self)) for role, c in roles), env,
                               family=self)
        return model, clip, vae

    def diffusion_model(self, path: Path, env: Environment) -> Any | None:
        if not path.is_file():
            return None
        info = self.inspect(path, TensorFile(path))
        return None if info is None else self.handles(info, env, require_vae=False)[0]

    def time_ids(self, options: Mapping[str, Any], pixel_hw: tuple[int, int], negative: bool) -> list[float]:
        """Size/crop conditioning (original size, crop, target size) in diffusers' (height, width) order; sizes a
        conditioning does not carry default to the latent's pixel size, as in ComfyUI."""
        height = options.get("height", pixel_hw[0])
        width = options.get("width", pixel_hw[1])
        crop = [options.get("crop_h", 0), options.get("crop_w", 0)]
        return [height, width, *crop, options.get("target_height", height), options.get("target_width", width)]

    def denoise(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
        batch = x.shape[0] // len(options)
        dtype = x.dtype
        pixel_hw = (x.shape[-2] * 8, x.shape[-1] * 8)
        pooled = torch.cat([pooled_output(o, self.name).to(x.device, dtype).expand(batch, -1) for o in options])
        ids = torch.tensor([self.time_ids(o, pixel_hw, n) for o, n in zip(options, negative)], device=x.device,
                           dtype=dtype).repeat_interleave(batch, dim=0)
        return net(x, t, encoder_hidden_states=context,
                   added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.float()

    def encode_text(self, clip: MultiClipHandle, models: dict[str, torch.nn.Module], text: str,
                    folders: Folders | None, text_l: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden of CLIP-L and bigG side by side, bigG's pooled projection)."""
        if "clip_g" not in models or "clip_l" not in models:
            raise ValueError(clip.missing("CLIP-L or CLIP-G"))
        return sdxl_conditioning(text if text_l is None else text_l, text, models["clip_l"], models["clip_g"],
                                 clip.layer, folders)


BASE = SDXL()  # the base's shipped configs, which the refiner shares for its scheduler and VAE
FAMILY = BASE
