"""Writing diffusers SD1.x/SD2.x components as one LDM-layout `.safetensors` file, as ComfyUI and A1111 expect.

The key names come from the same functions the loader inverts (nodes/sd/ldm_keys.py), so a written file loads
back to the same weights. Values that tensor shapes cannot tell (attention heads, activation, VAE scaling factor,
noise schedule, prediction type) are stored in the file's metadata, and `v_pred` is written as ComfyUI does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.nodes.sd.detect import METADATA_KEY, family_config
from latentgraph.nodes.sd.ldm_keys import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    hf_to_open_clip,
    to_ldm_vae_tensor,
    unet_key_to_ldm,
    vae_key_to_ldm,
)
from safetensors.torch import save_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

UNET_HINTS = ("attention_head_dim", "upcast_attention", "sample_size", "act_fn", "norm_eps", "norm_num_groups",
              "flip_sin_to_cos", "freq_shift")
TEXT_HINTS = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id",
              "projection_dim")
VAE_HINTS = ("scaling_factor", "sample_size", "act_fn", "norm_num_groups")
SCHEDULER_HINTS = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    config = unet.config
    up_attention = {i for i, t in enumerate(config.up_block_types) if "CrossAttn" in t}
    return {UNET_PREFIX + unet_key_to_ldm(k, config.layers_per_block, up_attention): v
            for k, v in unet.state_dict().items()}


def vae_to_ldm(vae: AutoencoderKL, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for k, v in vae.state_dict().items():
        ldm = vae_key_to_ldm(k, levels)
        out[prefix + ldm] = to_ldm_vae_tensor(ldm, v)
    return out


def text_encoder_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (quick_gelu) keeps HF names; OpenCLIP (gelu, SD2.x) gets its own names plus the unused last block.

    SD2.x files carry one more OpenCLIP block than SD2.x uses (it takes the penultimate one); an all-zero block
    stands in for it so that the file has the shape every SD2.x loader expects.
    """
    state = {"text_model." + (k[len("text_model."):] if k.startswith("text_model.") else k): v
             for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    if text_encoder.config.hidden_act != "gelu":
        return {CLIP_PREFIX + k: v for k, v in state.items()}
    layers = text_encoder.config.num_hidden_layers
    out = hf_to_open_clip(state, layers)
    template = {k: v for k, v in out.items() if k.startswith(f"transformer.resblocks.{layers - 1}.")}
    for k, v in template.items():
        out[k.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}.")] = torch.zeros_like(v)
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def save_single_file(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, path: Path,
                     prediction_type: str = "epsilon", dtype: torch.dtype | None = None) -> Path:
    """Writes the three components as one LDM-layout safetensors checkpoint; `dtype` converts floats (e.g. fp16)."""
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if prediction_type == "v_prediction":
        state["v_pred"] = torch.tensor([])
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    family = "sd2" if text_encoder.config.hidden_act == "gelu" else "sd1"
    scheduler = dict(family_config(family, "scheduler"), prediction_type=prediction_type)
    text = text_encoder.config.to_dict()
    hints = {
        "unet": {k: _plain(unet.config[k]) for k in UNET_HINTS if k in unet.config},
        "vae": {k: _plain(vae.config[k]) for k in VAE_HINTS if k in vae.config},
        "text_encoder": {k: text[k] for k in TEXT_HINTS if k in text},
        "scheduler": {k: scheduler[k] for k in SCHEDULER_HINTS},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(hints), "format": "pt"})
    return path
