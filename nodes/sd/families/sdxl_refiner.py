"""SDXL refiner: SDXL's layout with bigG as its only text encoder and time ids of original size, crop and aesthetic
score (6 for positive, 2.5 for negative prompts unless the conditioning says, as in ComfyUI)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.detect import CONFIG_DIR
from latentgraph.nodes.sd.families.sdxl import SDXL
from latentgraph.nodes.sd.multiclip import sdxl_conditioning
from latentgraph.nodes.sd.parts import MultiClipHandle

POSITIVE_SCORE = 6.0
NEGATIVE_SCORE = 2.5


class SDXLRefiner(SDXL):
    name = "sdxl_refiner"
    label = "SDXL refiner"
    priority = 21
    refiner = True
    config_dir = CONFIG_DIR / "sdxl_refiner"
    roles = (("clip_g", "text_encoder_2"),)
    text_roles = ("clip_g",)

    def time_ids(self, options: Mapping[str, Any], pixel_hw: tuple[int, int], negative: bool) -> list[float]:
        height = options.get("height", pixel_hw[0])
        width = options.get("width", pixel_hw[1])
        crop = [options.get("crop_h", 0), options.get("crop_w", 0)]
        score = options.get("aesthetic_score", NEGATIVE_SCORE if negative else POSITIVE_SCORE)
        return [height, width, *crop, score]

    def encode_text(self, clip: MultiClipHandle, models: dict[str, torch.nn.Module], text: str,
                    folders: Folders | None, text_l: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(bigG's hidden states, its pooled projection)."""
        if "clip_g" not in models:
            raise ValueError(clip.missing("CLIP-L or CLIP-G"))
        return sdxl_conditioning(text, text, None, models["clip_g"], clip.layer, folders)


FAMILY = SDXLRefiner()
