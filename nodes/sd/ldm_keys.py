"""Names of weights in the original (LDM) single-file layout versus diffusers' layout, for SD1.x and SD2.x.

One function per component renames a diffusers key to its LDM key; loading inverts it over the keys of the model
built from the detected config, so the two directions can never disagree. OpenAI CLIP (SD1.x) keeps Hugging Face
names under a prefix; OpenCLIP (SD2.x) fuses q/k/v and is converted tensor by tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _resnet(rest: str) -> str:
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key_to_ldm(key: str, layers_per_block: int, up_attention_levels: set[int]) -> str:
    """The LDM name (without prefix) of a UNet2DConditionModel weight."""
    per_level = layers_per_block + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in fixed.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * per_level + j
        return f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * per_level + j
        return f"output_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        slot = 2 if level in up_attention_levels else 1
        return f"output_blocks.{level * per_level + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet weight {key!r}")


def vae_key_to_ldm(key: str, levels: int) -> str:
    """The LDM name (without prefix) of an AutoencoderKL weight."""
    def vae_resnet(rest: str) -> str:
        return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest

    def attention(rest: str) -> str:
        for new, old in _VAE_ATTENTION:
            if rest.startswith(new + "."):
                return old + rest[len(new):]
        return rest

    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{vae_resnet(m[3])}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{attention(m[2])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{vae_resnet(m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{vae_resnet(m[3])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    return key


def is_vae_attention_matrix(ldm_key: str) -> bool:
    """LDM stores the VAE mid-block attention projections as 1x1 convolutions, diffusers as linear layers."""
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def to_ldm_vae_tensor(ldm_key: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if is_vae_attention_matrix(ldm_key) and tensor.ndim == 2 else tensor


def from_ldm_vae_tensor(ldm_key: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, 0, 0] if is_vae_attention_matrix(ldm_key) and tensor.ndim == 4 else tensor


def open_clip_to_hf(state: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower weights (prefix removed) as CLIPTextModel weights, keeping the first `layers` blocks."""
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
    }
    names = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for old, new in names:
            for p in ("weight", "bias"):
                out[f"{dst}{new}.{p}"] = state[f"{src}{old}.{p}"]
        for p, fused in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            q, k, v = state[f"{src}attn.{fused}"].chunk(3, dim=0)
            for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{dst}self_attn.{name}.{p}"] = t.clone()
    return out


def hf_to_open_clip(state: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The inverse of `open_clip_to_hf` for `layers` blocks."""
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    names = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for old, new in names:
            for p in ("weight", "bias"):
                out[f"{dst}{old}.{p}"] = state[f"{src}{new}.{p}"]
        for p, fused in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            out[f"{dst}attn.{fused}"] = torch.cat([state[f"{src}self_attn.{n}.{p}"] for n in ("q_proj", "k_proj",
                                                                                               "v_proj")])
    return out
