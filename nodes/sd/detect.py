"""Recognising an LDM-layout SD1.x/SD2.x checkpoint and deriving its diffusers configs from tensor shapes.

Every dimension (channels per level, layers per block, attention levels, context width, text encoder width, depth
and vocabulary, VAE levels and latent channels) is read from the shapes, so tiny test models and full-size
models load through the same path. What shapes cannot tell comes from the shipped family config
(`configs/sd1`, `configs/sd2`), chosen by the text encoder's kind, and can be overridden by hints a checkpoint
written by `checkpoint_save` carries in its metadata:

- attention heads: SD1.x uses 8 heads per UNet attention; SD2.x uses 64-channel heads; CLIP uses 64-wide heads;
- the VAE scaling factor and the noise schedule;
- the prediction type: a `v_pred` key (as ComfyUI writes it) or a metadata hint, else for SD2.x ComfyUI's test on
  the spread of a late transformer norm bias (v-prediction models have a wide one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import torch
from latentgraph.nodes.sd.ldm_keys import CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
METADATA_KEY = "latentgraph.configs"
V_PRED_STD_THRESHOLD = 0.09

Shapes = Mapping[str, tuple[int, ...]]


class UnknownCheckpoint(ValueError):
    """The file is not an SD1.x/SD2.x checkpoint this loader understands."""


@cache
def _config_text(family: str, component: str) -> str:
    return (CONFIG_DIR / family / f"{component}.json").read_text()


def family_config(family: str, component: str) -> dict[str, Any]:
    """A shipped config, parsed afresh: callers may change their copy without changing anyone else's."""
    return json.loads(_config_text(family, component))


@dataclass
class Detected:
    """What a single-file checkpoint holds: its family and a diffusers config per component."""

    family: str  # the family's registered name
    text_layout: str  # "clip" or "open_clip"
    prediction_type: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    up_attention_levels: set[int] = field(default_factory=set)
    text_layers_in_file: int = 0


def strip_prefix(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in shapes if (m := rx.match(k))})


def blocks_in(shapes: Shapes, prefix: str) -> int:
    return len(indices(shapes, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))


def unet_config(shapes: Shapes, base: dict[str, Any], head_channels: int | None) -> tuple[dict[str, Any], set[int]]:
    """A UNet2DConditionModel config from LDM UNet shapes (prefix removed); `head_channels` None means 8 heads."""
    if "input_blocks.0.0.weight" not in shapes or "out.2.weight" not in shapes:
        raise UnknownCheckpoint("no UNet weights (model.diffusion_model.*) found")
    if "label_emb.0.0.weight" in shapes or "label_emb.weight" in shapes:
        raise UnknownCheckpoint("class-conditioned UNets (SDXL, upscalers) are not supported by this loader")
    c0 = shapes["input_blocks.0.0.weight"][0]
    inputs = indices(shapes, r"input_blocks\.(\d+)\.")
    downs = indices(shapes, r"input_blocks\.(\d+)\.0\.op\.weight")
    per_level = downs[0] if downs else len(inputs)
    layers = per_level - 1
    levels = len(downs) + 1
    channels, down_types, up_types, depth, up_attention = [], [], [], [], set()
    for level in range(levels):
        block = 1 + level * per_level
        channels.append(shapes[f"input_blocks.{block}.0.out_layers.3.weight"][0])
        attn = f"input_blocks.{block}.1.proj_in.weight" in shapes
        down_types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        depth.append(blocks_in(shapes, f"input_blocks.{block}.1.") if attn else 1)
    for level in range(levels):
        attn = f"output_blocks.{level * per_level}.1.proj_in.weight" in shapes
        up_types.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
        if attn:
            up_attention.add(level)
    k_keys = sorted(k for k in shapes if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in sorted(shapes) if k.endswith(".1.proj_in.weight"))
    config = dict(base)
    config.update(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=down_types,
        up_block_types=up_types,
        mid_block_type="UNetMidBlock2DCrossAttn" if "middle_block.1.proj_in.weight" in shapes else None,
        cross_attention_dim=shapes[k_keys[0]][1],
        use_linear_projection=len(shapes[proj_in]) == 2,
        transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth,
        attention_head_dim=8 if head_channels is None else [max(1, c // head_channels) for c in channels],
    )
    if shapes["time_embed.0.weight"][0] != 4 * c0:
        config["time_embedding_dim"] = shapes["time_embed.0.weight"][0]
    return config, up_attention


def vae_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """An AutoencoderKL config from LDM VAE shapes (prefix removed)."""
    if "decoder.conv_in.weight" not in shapes or "encoder.conv_in.weight" not in shapes:
        raise UnknownCheckpoint("no VAE weights (first_stage_model.encoder/decoder.*) found")
    levels = indices(shapes, r"encoder\.down\.(\d+)\.")
    config = dict(base)
    config.update(
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_channels=shapes["decoder.conv_out.weight"][0],
        latent_channels=shapes["decoder.conv_in.weight"][1],
        block_out_channels=[shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels],
        layers_per_block=len(indices(shapes, r"encoder\.down\.0\.block\.(\d+)\.")),
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
    )
    return config


def text_config(shapes: Shapes, base: dict[str, Any], layout: str) -> tuple[dict[str, Any], int]:
    """A CLIPTextConfig dict from CLIP (HF names) or OpenCLIP shapes (prefix removed), and the blocks in the file.

    SD2.x uses the penultimate OpenCLIP block; like diffusers, the last block is left out of the model.
    """
    if layout == "clip":
        pre = "text_model." if "text_model.embeddings.token_embedding.weight" in shapes else ""
        vocab, width = shapes[f"{pre}embeddings.token_embedding.weight"]
        positions = shapes[f"{pre}embeddings.position_embedding.weight"][0]
        in_file = len(indices(shapes, re.escape(pre) + r"encoder\.layers\.(\d+)\."))
        inner = shapes[f"{pre}encoder.layers.0.mlp.fc1.weight"][0]
        layers = in_file
    else:
        vocab, width = shapes["token_embedding.weight"]
        positions = shapes["positional_embedding"][0]
        in_file = len(indices(shapes, r"transformer\.resblocks\.(\d+)\."))
        inner = shapes["transformer.resblocks.0.mlp.c_fc.weight"][0]
        layers = in_file - 1
    config = dict(base)
    config.update(vocab_size=vocab, hidden_size=width, max_position_embeddings=positions, intermediate_size=inner,
                  num_hidden_layers=layers, num_attention_heads=max(1, width // 64))
    return config, in_file


def _apply_hints(detected: Detected, hints: dict[str, Any]) -> None:
    for component in ("unet", "vae", "text_encoder", "scheduler"):
        getattr(detected, component).update(hints.get(component, {}))
    detected.prediction_type = detected.scheduler.get("prediction_type", detected.prediction_type)


class LdmFamily(Protocol):
    """What the LDM shape reader needs of an SD1.x-like family (SD1.x and SD2.x implement it)."""

    name: str
    text_layout: str  # "clip" or "open_clip"
    head_channels: int | None  # UNet attention head width; None: 8 heads per attention
    v_from_norm_spread: bool  # guess v-prediction from a late norm bias when nothing says
    eps_sample_size: int | None  # the UNet sample size of an eps model, when it differs from the config's

    def config(self, component: str) -> dict[str, Any]: ...


def text_layout(shapes: Shapes) -> str:
    """"open_clip" or "clip": how the file stores its text encoder."""
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in shapes):
        return "open_clip"
    if any(k.startswith(CLIP_PREFIX) for k in shapes):
        return "clip"
    raise UnknownCheckpoint("no text encoder weights (cond_stage_model.*) found")


def detect(shapes: Shapes, metadata: Mapping[str, str] | None = None,
           read: Callable[[str], torch.Tensor] | None = None, *, family: LdmFamily) -> Detected:
    """Configs of an LDM-layout checkpoint of `family` from its key shapes; `read` loads one tensor when needed."""
    layout = family.text_layout
    prefix = OPEN_CLIP_PREFIX if layout == "open_clip" else CLIP_PREFIX
    unet_shapes = strip_prefix(shapes, UNET_PREFIX)
    unet, up_attention = unet_config(unet_shapes, family.config("unet"), family.head_channels)
    vae = vae_config(strip_prefix(shapes, VAE_PREFIX), family.config("vae"))
    text, in_file = text_config(strip_prefix(shapes, prefix), family.config("text_encoder"), layout)
    scheduler = family.config("scheduler")
    prediction = "epsilon"
    if "v_pred" in shapes:
        prediction = "v_prediction"
    elif family.v_from_norm_spread and read is not None and unet["in_channels"] == 4:
        last = max(up_attention) * (unet["layers_per_block"] + 1) + unet["layers_per_block"] if up_attention else None
        key = f"{UNET_PREFIX}output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
        if last is not None and key in shapes:
            prediction = "v_prediction" if torch.std(read(key).float(), unbiased=False) > V_PRED_STD_THRESHOLD \
                else "epsilon"
    scheduler["prediction_type"] = prediction
    if prediction == "epsilon" and family.eps_sample_size is not None:
        unet["sample_size"] = family.eps_sample_size
    detected = Detected(family.name, layout, prediction, unet, vae, text, scheduler, up_attention, in_file)
    if metadata and METADATA_KEY in metadata:
        _apply_hints(detected, json.loads(metadata[METADATA_KEY]))
    return detected
