"""SD1.x: a UNet with one OpenAI CLIP text encoder (`cond_stage_model.transformer.`), eps prediction, 4 channels.

The family also reads the LDM single-file layout and diffusers folders that SD2.x (nodes/sd/families/sd2.py)
shares; SD2.x overrides what differs. Single files are read last (priority 90): every file that no other family
claimed is tried as an LDM checkpoint, so that its error names what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.nodes.sd.checkpoint import (
    CheckpointInfo,
    TensorFile,
    file_identity,
    is_diffusers_folder,
    load_ldm_component,
    read_json,
)
from latentgraph.nodes.sd.detect import CONFIG_DIR, UnknownCheckpoint, detect, text_layout
from latentgraph.nodes.sd.families import unknown_file
from latentgraph.nodes.sd.family import BaseFamily
from latentgraph.nodes.sd.handles import ClipHandle, ModelHandle, VaeHandle, component
from latentgraph.nodes.sd.services import model_manager


class SD1(BaseFamily):
    name = "sd1"
    label = "SD1.x"
    priority = 90
    config_dir = CONFIG_DIR / "sd1"
    text_layout = "clip"
    head_channels: int | None = None  # 8 heads per attention
    v_from_norm_spread = False
    eps_sample_size: int | None = None
    folder_text_act = "quick_gelu"  # the text encoder's activation in a diffusers folder

    def _is_mine(self, layout: str) -> bool:
        return layout == self.text_layout

    def inspect(self, path: Path, tensors: TensorFile | None = None) -> CheckpointInfo | None:
        if is_diffusers_folder(path):
            if not (path / "unet").is_dir():
                return None
            text = read_json(path / "text_encoder" / "config.json")
            if (text.get("hidden_act") == "gelu") != (self.folder_text_act == "gelu"):
                return None
            scheduler_file = next((path / "scheduler").glob("*.json"), None) if (path / "scheduler").is_dir() \
                else None
            scheduler = self.config("scheduler")
            if scheduler_file is not None:
                loaded = read_json(scheduler_file)
                scheduler.update({k: v for k, v in loaded.items() if k in scheduler and not k.startswith("_")})
            configs = {"unet": read_json(path / "unet" / "config.json"),
                       "vae": read_json(path / "vae" / "config.json"), "text_encoder": text, "scheduler": scheduler}
            return CheckpointInfo(path, "diffusers", self.name, scheduler["prediction_type"], configs,
                                  identity=file_identity(path))
        if tensors is None:
            return None
        try:
            if not self._is_mine(text_layout(tensors.shapes)):
                return None
            detected = detect(tensors.shapes, tensors.metadata, tensors.read_one, family=self)
        except UnknownCheckpoint as error:
            raise unknown_file(path, tensors.shapes, str(error)) from None
        configs = {"unet": detected.unet, "vae": detected.vae, "text_encoder": detected.text_encoder,
                   "scheduler": detected.scheduler}
        return CheckpointInfo(path, "single", self.name, detected.prediction_type, configs, detected,
                              identity=file_identity(path), extra={"tensors": tensors})

    def load_component(self, info: CheckpointInfo, component: str, dtype: torch.dtype) -> torch.nn.Module:
        return load_ldm_component(info, component, dtype)

    def handles(self, info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
        manager = model_manager(env)
        path, identity = info.path, info.identity
        model = ModelHandle(component(path, identity, "unet", manager, self), env, self,
                            scheduler_config=info.configs["scheduler"],
                            latent_scale=float(info.configs["vae"].get("scaling_factor", 0.18215)))
        clip = ClipHandle(component(path, identity, "text_encoder", manager, self), env, self)
        vae = VaeHandle(component(path, identity, "vae", manager, self), env)
        return model, clip, vae


FAMILY = SD1()
