"""What each family's denoiser takes besides the latent, the timestep and the text context.

SD1.x/SD2.x UNets take the context only. SDXL UNets also take the pooled text embedding and the time ids
(original size, crop, target size for the base; original size, crop, aesthetic score for the refiner), which
ComfyUI keeps in the conditioning's options (`pooled_output`, `width`, `height`, `crop_w`, `crop_h`,
`target_width`, `target_height`, `aesthetic_score`); sizes a conditioning does not carry default to the latent's
pixel size, and the refiner's score to 6 for positive and 2.5 for negative prompts, as in ComfyUI. SD3's MMDiT takes
the pooled projections and a batch of timesteps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

XL_FAMILIES = ("sdxl", "sdxl_refiner")
FLOW_FAMILIES = ("sd3",)
POSITIVE_SCORE = 6.0
NEGATIVE_SCORE = 2.5


def time_ids(family: str, options: Mapping[str, Any], pixel_hw: tuple[int, int], negative: bool) -> list[float]:
    """SDXL's size/crop (and refiner aesthetic score) conditioning, in diffusers' (height, width) order."""
    height = options.get("height", pixel_hw[0])
    width = options.get("width", pixel_hw[1])
    crop = [options.get("crop_h", 0), options.get("crop_w", 0)]
    if family == "sdxl_refiner":
        score = options.get("aesthetic_score", NEGATIVE_SCORE if negative else POSITIVE_SCORE)
        return [height, width, *crop, score]
    return [height, width, *crop, options.get("target_height", height), options.get("target_width", width)]


def _pooled(options: Mapping[str, Any], family: str) -> torch.Tensor:
    pooled = options.get("pooled_output")
    if pooled is None:
        raise ValueError(f"a {family} model needs conditioning with a pooled text embedding: encode the prompt with "
                         f"this model's CLIP (CLIPTextEncode, CLIPTextEncodeSDXL or its refiner variant)")
    return pooled


def denoiser_output(family: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
    """The model output for `x` = len(options) groups of equal batch, group i conditioned by context/options[i]."""
    groups = len(options)
    batch = x.shape[0] // groups
    dtype = x.dtype
    if family in XL_FAMILIES:
        pixel_hw = (x.shape[-2] * 8, x.shape[-1] * 8)
        pooled = torch.cat([_pooled(o, family).to(x.device, dtype).expand(batch, -1) for o in options])
        ids = torch.tensor([time_ids(family, o, pixel_hw, n) for o, n in zip(options, negative)], device=x.device,
                           dtype=dtype).repeat_interleave(batch, dim=0)
        return model(x, t, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.float()
    if family in FLOW_FAMILIES:
        pooled = torch.cat([_pooled(o, family).to(x.device, dtype).expand(batch, -1) for o in options])
        timestep = t.reshape(-1)[:1].to(x.device).expand(x.shape[0])
        width = model.config.joint_attention_dim
        if context.shape[-1] < width:
            context = torch.nn.functional.pad(context, (0, width - context.shape[-1]))
        return model(hidden_states=x, timestep=timestep, encoder_hidden_states=context,
                     pooled_projections=pooled).sample.float()
    return model(x, t, encoder_hidden_states=context).sample.float()
