"""Stable Diffusion 3 (MMDiT) files: recognising them, their diffusers configs, loading and writing them.

Stability's SD3 single file keeps the MMDiT under `model.diffusion_model.` (joint_blocks, x_embedder, ...), the
16-channel VAE under `first_stage_model.` and, when included, the text encoders under `text_encoders.clip_l.`,
`text_encoders.clip_g.` and `text_encoders.t5xxl.` with Hugging Face names. ComfyUI's separate files hold the same
tensors without prefixes: the MMDiT alone (UNETLoader), each text encoder alone (CLIPLoader and friends).

The MMDiT's names are one table (`_transformer_table`) read in both directions, so loading and writing can never
disagree. Every dimension comes from the shapes; SD3.5's dual-attention layers and q/k norms are found by their keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.nodes.sd.checkpoint import (
    CheckpointInfo,
    TensorFile,
    build_vae,
    file_identity,
    materialize,
    vae_state,
)
from latentgraph.nodes.sd.checkpoint_save import vae_to_ldm
from latentgraph.nodes.sd.detect import (
    METADATA_KEY,
    Shapes,
    UnknownCheckpoint,
    family_config,
    indices,
    strip_prefix,
    text_config,
    vae_config,
)
from latentgraph.nodes.sd.ldm_keys import UNET_PREFIX, VAE_PREFIX
from safetensors.torch import save_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

TEXT_PREFIXES = {"text_encoder": "text_encoders.clip_l.transformer.",
                 "text_encoder_2": "text_encoders.clip_g.transformer.",
                 "text_encoder_3": "text_encoders.t5xxl.transformer."}
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def is_sd3_transformer(shapes: Shapes, prefix: str = UNET_PREFIX) -> bool:
    return f"{prefix}joint_blocks.0.x_block.attn.qkv.weight" in shapes


def _transformer_table(layers: int, dual: set[int], qk_norm: bool) -> Iterator[tuple[str, tuple[str, ...], str]]:
    """(Stability name, diffusers names, how) per tensor; how is "same", "cat" (fused q/k/v) or "swap" (the final
    adaLN halves, which diffusers orders scale-then-shift)."""
    def linear(sai: str, ours: str, how: str = "same") -> Iterator[tuple[str, tuple[str, ...], str]]:
        for p in ("weight", "bias"):
            yield f"{sai}.{p}", (f"{ours}.{p}",), how

    def qkv(sai: str, names: tuple[str, str, str]) -> Iterator[tuple[str, tuple[str, ...], str]]:
        for p in ("weight", "bias"):
            yield f"{sai}.{p}", tuple(f"{n}.{p}" for n in names), "cat"

    yield "pos_embed", ("pos_embed.pos_embed",), "same"
    yield from linear("x_embedder.proj", "pos_embed.proj")
    yield from linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    yield from linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    yield from linear("context_embedder", "context_embedder")
    yield from linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    yield from linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    for i in range(layers):
        x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
        last = i == layers - 1
        yield from qkv(f"{x}.attn.qkv", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"))
        yield from qkv(f"{c}.attn.qkv", (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"))
        if qk_norm:
            for sai, ours in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                              ("context_block.attn.ln_q", "attn.norm_added_q"),
                              ("context_block.attn.ln_k", "attn.norm_added_k")):
                yield f"joint_blocks.{i}.{sai}.weight", (f"{d}.{ours}.weight",), "same"
        yield from linear(f"{x}.attn.proj", f"{d}.attn.to_out.0")
        if not last:
            yield from linear(f"{c}.attn.proj", f"{d}.attn.to_add_out")
        if i in dual:
            yield from qkv(f"{x}.attn2.qkv", (f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v"))
            if qk_norm:
                yield f"{x}.attn2.ln_q.weight", (f"{d}.attn2.norm_q.weight",), "same"
                yield f"{x}.attn2.ln_k.weight", (f"{d}.attn2.norm_k.weight",), "same"
            yield from linear(f"{x}.attn2.proj", f"{d}.attn2.to_out.0")
        yield from linear(f"{x}.adaLN_modulation.1", f"{d}.norm1.linear")
        yield from linear(f"{c}.adaLN_modulation.1", f"{d}.norm1_context.linear", "swap" if last else "same")
        yield from linear(f"{x}.mlp.fc1", f"{d}.ff.net.0.proj")
        yield from linear(f"{x}.mlp.fc2", f"{d}.ff.net.2")
        if not last:
            yield from linear(f"{c}.mlp.fc1", f"{d}.ff_context.net.0.proj")
            yield from linear(f"{c}.mlp.fc2", f"{d}.ff_context.net.2")
    yield from linear("final_layer.linear", "proj_out")
    yield from linear("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _table_for(config: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    return list(_transformer_table(config["num_layers"], set(config.get("dual_attention_layers") or ()),
                                   config.get("qk_norm") is not None))


def transformer_to_sai(transformer: SD3Transformer2DModel) -> dict[str, torch.Tensor]:
    """The MMDiT's weights under Stability's names (no prefix)."""
    state = transformer.state_dict()
    out = {}
    for sai, ours, how in _table_for(transformer.config):
        tensor = torch.cat([state[n] for n in ours]) if how == "cat" else state[ours[0]]
        out[sai] = _swap_halves(tensor) if how == "swap" else tensor
    return out


def transformer_from_sai(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for sai, ours, how in _table_for(config):
        if sai not in state:
            raise UnknownCheckpoint(f"SD3 transformer weight {sai} is missing")
        tensor = state[sai]
        if how == "cat":
            out.update(zip(ours, tensor.chunk(len(ours), dim=0)))
        else:
            out[ours[0]] = _swap_halves(tensor) if how == "swap" else tensor
    return out


def transformer_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """SD3Transformer2DModel config from MMDiT shapes (prefix removed)."""
    if "x_embedder.proj.weight" not in shapes:
        raise UnknownCheckpoint("no MMDiT patch embedding (x_embedder.proj.weight) found")
    width, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    head = base["attention_head_dim"]
    config = dict(base)
    config.update(
        in_channels=in_channels,
        patch_size=patch,
        out_channels=shapes["final_layer.linear.weight"][0] // (patch * patch),
        num_layers=len(indices(shapes, r"joint_blocks\.(\d+)\.")),
        num_attention_heads=width // head,
        caption_projection_dim=shapes["context_embedder.weight"][0],
        joint_attention_dim=shapes["context_embedder.weight"][1],
        pooled_projection_dim=shapes["y_embedder.mlp.0.weight"][1],
        pos_embed_max_size=math.isqrt(shapes["pos_embed"][1]),
        dual_attention_layers=indices(shapes, r"joint_blocks\.(\d+)\.x_block\.attn2\."),
        qk_norm="rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in shapes else None,
    )
    return config


def clip_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection config from Hugging Face CLIP shapes (prefix removed)."""
    config, _ = text_config(shapes, base, "clip")
    if "text_projection.weight" in shapes:
        config["projection_dim"] = shapes["text_projection.weight"][0]
    return config


def t5_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """T5EncoderModel config from T5 encoder shapes (prefix removed); heads come from the relative position bias."""
    embed = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
    vocab, width = shapes[embed]
    block = "encoder.block.0.layer."
    buckets, heads = shapes[f"{block}0.SelfAttention.relative_attention_bias.weight"]
    gated = f"{block}1.DenseReluDense.wi_0.weight" in shapes
    config = dict(base)
    config.update(
        vocab_size=vocab, d_model=width, num_heads=heads, relative_attention_num_buckets=buckets,
        d_kv=shapes[f"{block}0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes[f"{block}1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"][0],
        num_layers=len(indices(shapes, r"encoder\.block\.(\d+)\.")),
        is_gated_act=gated, feed_forward_proj="gated-gelu" if gated else "relu",
    )
    return config


def detect_sd3(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Configs per component found in an SD3 single file (transformer, scheduler, and what else it includes)."""
    hints = json.loads(metadata[METADATA_KEY]) if metadata and METADATA_KEY in metadata else {}
    base = dict(family_config("sd3", "transformer"), **hints.get("transformer", {}))
    configs: dict[str, dict[str, Any]] = {
        "transformer": transformer_config(strip_prefix(shapes, UNET_PREFIX), base),
        "scheduler": dict(family_config("sd3", "scheduler")),
    }
    vae_shapes = strip_prefix(shapes, VAE_PREFIX)
    if vae_shapes:
        configs["vae"] = sd3_vae_config(vae_shapes)
    for component, prefix in TEXT_PREFIXES.items():
        text_shapes = strip_prefix(shapes, prefix)
        if not text_shapes:
            continue
        base = family_config("sd3", component)
        configs[component] = t5_config(text_shapes, base) if component == "text_encoder_3" \
            else clip_config(text_shapes, base)
    for component, values in hints.items():
        if component in configs:
            configs[component].update(values)
    return configs


def sd3_vae_config(shapes: Shapes) -> dict[str, Any]:
    config = vae_config(shapes, family_config("sd3", "vae"))
    config["use_quant_conv"] = "quant_conv.weight" in shapes
    config["use_post_quant_conv"] = "post_quant_conv.weight" in shapes
    return config


def inspect_sd3(path: Path, tensors: TensorFile) -> CheckpointInfo:
    configs = detect_sd3(tensors.shapes, tensors.metadata)
    return CheckpointInfo(path, "single", "sd3", "flow", configs, identity=file_identity(path),
                          extra={"tensors": tensors})


def build_transformer(config: Mapping[str, Any]) -> SD3Transformer2DModel:
    from diffusers import SD3Transformer2DModel
    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(dict(config))


def build_clip(config: Mapping[str, Any]) -> CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return CLIPTextModelWithProjection(CLIPTextConfig(**clean))


def build_t5(config: Mapping[str, Any]) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return T5EncoderModel(T5Config(**clean))


def _read_prefixed(tensors: TensorFile, prefix: str) -> dict[str, torch.Tensor]:
    keys = [k for k in tensors.shapes if k.startswith(prefix)]
    return {k[len(prefix):]: v for k, v in tensors.read(keys).items()}


def load_transformer(tensors: TensorFile, config: Mapping[str, Any], prefix: str,
                     dtype: torch.dtype) -> SD3Transformer2DModel:
    model = build_transformer(config)
    return materialize(model, transformer_from_sai(_read_prefixed(tensors, prefix), config), dtype)


def load_text_model(tensors: TensorFile, component: str, config: Mapping[str, Any], prefix: str,
                    dtype: torch.dtype) -> torch.nn.Module:
    """A CLIP (with projection) or T5 encoder stored with Hugging Face names under `prefix`."""
    state = _read_prefixed(tensors, prefix)
    if component == "text_encoder_3":
        model = build_t5(config)
        shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
        state = {k: v for k, v in state.items() if k.startswith("encoder.block.") or k.startswith("encoder.final")}
        state.update({"shared.weight": shared, "encoder.embed_tokens.weight": shared})
    else:
        model = build_clip(config)
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        if "text_projection.weight" not in state:
            raise UnknownCheckpoint(f"{tensors.path.name}: CLIP text encoder without text_projection.weight "
                                    "(SD3 needs the projected pooled output)")
    return materialize(model, state, dtype)


def load_sd3_component(info: CheckpointInfo, component: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """One component of an SD3 single file."""
    tensors: TensorFile = info.extra["tensors"]
    if component not in info.configs or component == "scheduler":
        raise UnknownCheckpoint(f"{info.path.name} (sd3) does not include {component}")
    config = info.configs[component]
    if component == "transformer":
        return load_transformer(tensors, config, UNET_PREFIX, dtype)
    if component == "vae":
        model = build_vae(config)
        return materialize(model, vae_state(tensors, VAE_PREFIX, model, len(config["block_out_channels"])), dtype)
    return load_text_model(tensors, component, config, TEXT_PREFIXES[component], dtype)


TRANSFORMER_HINTS = ("attention_head_dim", "sample_size")
VAE_HINTS = ("scaling_factor", "shift_factor", "sample_size")
CLIP_HINTS = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")


def save_sd3_single_file(transformer: SD3Transformer2DModel, vae: AutoencoderKL,
                         text_encoders: Mapping[str, torch.nn.Module], path: Path,
                         dtype: torch.dtype | None = None, shift: float | None = None) -> Path:
    """Writes SD3 in Stability's single-file layout; `text_encoders` maps component names to the ones to include."""
    state = {UNET_PREFIX + k: v for k, v in transformer_to_sai(transformer).items()}
    state.update(vae_to_ldm(vae))
    hints: dict[str, dict[str, Any]] = {
        "transformer": {k: transformer.config[k] for k in TRANSFORMER_HINTS},
        "vae": {k: vae.config[k] for k in VAE_HINTS if vae.config.get(k) is not None},
    }
    if shift is not None:
        hints["scheduler"] = {"shift": shift}
    for component, model in text_encoders.items():
        prefix = TEXT_PREFIXES[component]
        state.update({prefix + k: v for k, v in model.state_dict().items()
                      if not k.endswith("position_ids") and k != "encoder.embed_tokens.weight"})
        if component != "text_encoder_3":
            hints[component] = {k: v for k, v in model.config.to_dict().items() if k in CLIP_HINTS}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(hints), "format": "pt"})
    return path


def is_sd3_folder(path: Path) -> bool:
    return (path / "transformer" / "config.json").is_file() and \
        json.loads((path / "transformer" / "config.json").read_text()).get("_class_name") == "SD3Transformer2DModel"


def text_file_kind(shapes: Shapes) -> tuple[str, str, int]:
    """(kind, prefix, width) of a standalone text encoder file: kind "t5" or "clip" (Hugging Face names)."""
    for prefix in ("", "transformer.", "text_encoders.t5xxl.transformer."):
        key = f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight"
        if key in shapes:
            return "t5", prefix, shapes[key][1]
    for prefix in ("", "transformer."):
        key = f"{prefix}text_model.embeddings.token_embedding.weight"
        if key in shapes:
            return "clip", prefix, shapes[key][1]
    found = sorted({re.split(r"\.\d+\.", k)[0] for k in shapes})[:6]
    raise UnknownCheckpoint(f"not a CLIP or T5 text encoder file (Hugging Face names expected); found {found}")
