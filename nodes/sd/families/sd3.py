"""SD3 / SD3.5: an MMDiT on flow matching (shifted sigmas), CLIP-L + CLIP-G (+ T5-XXL when provided) whose pooled
projections and joint context condition it, a 16-channel VAE with a latent shift. Stability's single-file layout is
read and written by nodes/sd/sd3.py; separate MMDiT and text encoder files (ComfyUI's) by nodes/sd/parts.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile, file_identity
from latentgraph.nodes.sd.detect import CONFIG_DIR, UnknownCheckpoint
from latentgraph.nodes.sd.family import BaseFamily, pooled_output
from latentgraph.nodes.sd.flow import FlowSpace
from latentgraph.nodes.sd.handles import VaeHandle
from latentgraph.nodes.sd.multiclip import sd3_conditioning
from latentgraph.nodes.sd.noise_space import NoiseSpace
from latentgraph.nodes.sd.parts import (
    T5_TOKENIZER_DIR,
    FlowModelHandle,
    MultiClipHandle,
    find_t5_tokenizer,
    folder_info,
    load_folder_component,
    load_t5_tokenizer,
    part,
)
from latentgraph.nodes.sd.sd3 import inspect_sd3, is_sd3_folder, is_sd3_transformer, load_sd3_component
from latentgraph.nodes.sd.services import model_manager

ROLES = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5"}


class SD3(BaseFamily):
    name = "sd3"
    label = "SD3"
    priority = 10
    latent_channels = 16
    config_dir = CONFIG_DIR / "sd3"
    text_roles = ("clip_l", "clip_g", "t5")
    clip_loaders = "TripleCLIPLoader or DualCLIPLoader (type sd3)"
    default_sampling = {"width": 1024, "height": 1024, "steps": 28, "cfg": 4.5, "sampler_name": "euler",
                        "scheduler": "sgm_uniform"}

    def inspect(self, path: Path, tensors: TensorFile | None = None) -> CheckpointInfo | None:
        if path.is_dir():
            return folder_info(path, self.name, self.config("scheduler"), "flow") if is_sd3_folder(path) else None
        if tensors is None or not is_sd3_transformer(tensors.shapes):
            return None
        return inspect_sd3(path, tensors)

    def load_component(self, info: CheckpointInfo, component: str, dtype: torch.dtype) -> torch.nn.Module:
        if info.kind == "diffusers":
            return load_folder_component(info, component, dtype, projection=True)
        return load_sd3_component(info, component, dtype)

    def _roles(self, info: CheckpointInfo) -> list[tuple[str, str]]:
        return [(role, component) for component, role in ROLES.items() if component in info.configs]

    def handles(self, info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
        manager = model_manager(env)
        path, identity = info.path, info.identity
        if "vae" not in info.configs and require_vae:
            raise UnknownCheckpoint(f"{path.name} has no VAE; load one with VAELoader")
        vae_config = info.configs.get("vae") or self.config("vae")
        vae = VaeHandle(part(path, identity, "vae", manager, self), env) if "vae" in info.configs else None
        model = FlowModelHandle(part(path, identity, "transformer", manager, self), env, self,
                                scheduler_config=dict(info.configs["scheduler"]),
                                latent_scale=float(vae_config.get("scaling_factor", 1.0)),
                                latent_shift=float(vae_config.get("shift_factor") or 0.0))
        roles = self._roles(info)
        tokenizer = None
        if any(role == "t5" for role, _ in roles):
            folder = info.path / "tokenizer_3" if info.kind == "diffusers" else None
            tokenizer = folder if folder is not None and folder.is_dir() else find_t5_tokenizer(env.folders,
                                                                                              info.path.parent)
        clip = MultiClipHandle(tuple((role, part(path, identity, c, manager, self)) for role, c in roles), env,
                               family=self, t5_tokenizer=tokenizer)
        return model, clip, vae

    def diffusion_model(self, path: Path, env: Environment) -> Any | None:
        """An MMDiT file alone (ComfyUI's diffusion_models), with or without the model.diffusion_model. prefix."""
        if not path.is_file() or not any("joint_blocks." in k for k in TensorFile(path).shapes):
            return None
        vae = self.config("vae")
        return FlowModelHandle(part(path, file_identity(path), "transformer_file", model_manager(env)), env, self,
                               scheduler_config=self.config("scheduler"), latent_scale=vae["scaling_factor"],
                               latent_shift=vae["shift_factor"])

    def noise_space(self, model: Any, sampler_name: str, scheduler_name: str) -> NoiseSpace:
        return FlowSpace(sampler_name, scheduler_name, model.scheduler_config, model.latent_scale, model.latent_shift)

    def denoise(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
        """The MMDiT takes the pooled projections and a batch of timesteps; the context is zero-padded to its joint
        attention width (what diffusers gives with and without T5)."""
        batch = x.shape[0] // len(options)
        pooled = torch.cat([pooled_output(o, self.name).to(x.device, x.dtype).expand(batch, -1) for o in options])
        timestep = t.reshape(-1)[:1].to(x.device).expand(x.shape[0])
        width = net.config.joint_attention_dim
        if context.shape[-1] < width:
            context = torch.nn.functional.pad(context, (0, width - context.shape[-1]))
        return net(hidden_states=x, timestep=timestep, encoder_hidden_states=context,
                   pooled_projections=pooled).sample.float()

    def encode_text(self, clip: MultiClipHandle, models: dict[str, torch.nn.Module], text: str,
                    folders: Folders | None, text_l: str | None, text_g: str | None = None,
                    text_t5: str | None = None, with_clip: bool = True, with_t5: bool = True,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`text` for every encoder, or (CLIPTextEncodeSD3) `text` for CLIP-L, `text_g` for CLIP-G and `text_t5`
        for T5, with the CLIP or T5 part of the context left out (with_clip / with_t5 False)."""
        if not models:
            raise ValueError(clip.missing("text encoders"))
        t5 = models.get("t5")
        tokenizer = None
        if t5 is not None:
            if clip.t5_tokenizer is None:
                raise ValueError(
                    "T5 weights are loaded but no T5 tokenizer was provided (none can be downloaded): put its "
                    f"tokenizer.json (or spiece.model) in models/text_encoders/{T5_TOKENIZER_DIR}/, or leave T5 "
                    "out (DualCLIPLoader with CLIP-L and CLIP-G runs SD3 without it)")
            tokenizer = load_t5_tokenizer(clip.t5_tokenizer)
        return sd3_conditioning(text, models.get("clip_l"), models.get("clip_g"), t5, tokenizer, clip.layer, folders,
                                text_g=text_g, text_t5=text_t5, with_clip=with_clip, with_t5=with_t5)


FAMILY = SD3()
