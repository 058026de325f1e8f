"""SDXL base and refiner single files: recognising them, their diffusers configs, loading and writing them.

An SDXL file (Stability's layout, as ComfyUI and A1111 read it) keeps the UNet and VAE under the SD1.x prefixes and
the text encoders under `conditioner.embedders.N.`: the base has OpenAI CLIP-L (Hugging Face names) at 0 and
OpenCLIP bigG at 1, the refiner only bigG at 0. The UNet differs from SD1.x by its `label_emb` (the pooled text
embedding plus size/crop/aesthetic-score time ids) and by transformer depth that varies per level, so the SD1.x
shape reader (nodes/sd/detect.py) is reused on everything else and the rest is read here. Every dimension comes
from the shapes; head layout, time-id width and the schedule come from `configs/sdxl_base` / `sdxl_refiner` or from
the hints a file written by `save_sdxl_single_file` carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.nodes.sd.checkpoint import (
    CheckpointInfo,
    TensorFile,
    build_unet,
    build_vae,
    file_identity,
    materialize,
    read_renamed,
    vae_state,
)
from latentgraph.nodes.sd.checkpoint_save import vae_to_ldm
from latentgraph.nodes.sd.detect import (
    METADATA_KEY,
    Shapes,
    UnknownCheckpoint,
    blocks_in,
    family_config,
    strip_prefix,
    text_config,
    vae_config,
)
from latentgraph.nodes.sd.detect import unet_config as sd_unet_config
from latentgraph.nodes.sd.ldm_keys import UNET_PREFIX, VAE_PREFIX, hf_to_open_clip, open_clip_to_hf, unet_key_to_ldm
from safetensors.torch import save_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

EMBEDDERS = "conditioner.embedders."
BASE_CLIP_L = "conditioner.embedders.0.transformer."
BASE_BIG_G = "conditioner.embedders.1.model."
REFINER_BIG_G = "conditioner.embedders.0.model."
HEAD_CHANNELS = 64
REFINER_TIME_IDS = 5  # (h, w, crop_h, crop_w, score); the base has 6: (h, w, crop_h, crop_w, target_h, target_w)
BASE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
REFINER_COMPONENTS = ("unet", "vae", "text_encoder_2")
# the registered family names (nodes/sd/families/sdxl.py, sdxl_refiner.py) and their shipped config folders
BASE_NAME, REFINER_NAME = "sdxl", "sdxl_refiner"
BASE_CONFIGS, REFINER_CONFIGS = "sdxl_base", "sdxl_refiner"
_ADD_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}


def is_sdxl(shapes: Shapes) -> bool:
    return f"{UNET_PREFIX}label_emb.0.0.weight" in shapes or any(k.startswith(EMBEDDERS) for k in shapes)


def xl_unet_key_to_ldm(key: str, layers_per_block: int, up_attention_levels: set[int]) -> str:
    """The LDM name of an SDXL UNet weight: SD1.x's names plus the additional (label) embedding."""
    for new, old in _ADD_EMBEDDING.items():
        if key.startswith(new):
            return old + key[len(new):]
    return unet_key_to_ldm(key, layers_per_block, up_attention_levels)


def xl_unet_config(shapes: Shapes, base: dict[str, Any]) -> tuple[dict[str, Any], set[int]]:
    """UNet config from SDXL UNet shapes (prefix removed); the depth list ends with the mid block's, as diffusers
    takes the mid block's depth from the last entry."""
    if "label_emb.0.0.weight" not in shapes:
        raise UnknownCheckpoint("an SDXL UNet needs label_emb.0.0.weight (the pooled text + time ids embedding)")
    plain = {k: v for k, v in shapes.items() if not k.startswith("label_emb.")}
    config, up_attention = sd_unet_config(plain, base, HEAD_CHANNELS)
    per_level = config["layers_per_block"] + 1
    mid = blocks_in(plain, "middle_block.1.") or 1
    depth = [blocks_in(plain, f"input_blocks.{1 + level * per_level}.1.") or mid
             for level in range(len(config["block_out_channels"]))]
    if depth[-1] != mid:
        raise UnknownCheckpoint(f"UNet with mid-block depth {mid} after a level of depth {depth[-1]} is not SDXL")
    config.update(
        transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth,
        addition_embed_type="text_time",
        projection_class_embeddings_input_dim=shapes["label_emb.0.0.weight"][1],
    )
    return config, up_attention


def big_g_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection config from OpenCLIP bigG shapes: SDXL keeps every block and the projection."""
    config, in_file = text_config(shapes, base, "open_clip")
    config.update(num_hidden_layers=in_file, projection_dim=shapes["text_projection"][1])
    return config


def _is_refiner(shapes: Shapes, unet: dict[str, Any]) -> bool:
    """Whether an SDXL file is a refiner: by where its bigG sits, else by its UNet's time-id width."""
    if any(k.startswith(BASE_BIG_G) for k in shapes):
        return False
    if any(k.startswith(REFINER_BIG_G) for k in shapes):
        return True
    adm, context = unet["projection_class_embeddings_input_dim"], unet["cross_attention_dim"]
    time_width = family_config(BASE_CONFIGS, "unet")["addition_time_embed_dim"]
    return adm - REFINER_TIME_IDS * time_width == context


def detect_sdxl(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> tuple[str, dict[str, dict], set[int]]:
    """(family name, configs per component, up levels with attention) of an SDXL base or refiner file."""
    refiner, configs, up_attention = read_sdxl(shapes, metadata)
    return (REFINER_NAME if refiner else BASE_NAME), configs, up_attention


def read_sdxl(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> tuple[bool, dict[str, dict], set[int]]:
    """(whether it is a refiner, configs per component, up levels with attention) of an SDXL file."""
    unet_shapes = strip_prefix(shapes, UNET_PREFIX)
    if "input_blocks.0.0.weight" not in unet_shapes:
        raise UnknownCheckpoint("SDXL text encoder weights found but no UNet (model.diffusion_model.*)")
    unet, up_attention = xl_unet_config(unet_shapes, family_config(BASE_CONFIGS, "unet"))
    refiner = _is_refiner(shapes, unet)
    source = REFINER_CONFIGS if refiner else BASE_CONFIGS
    unet, up_attention = xl_unet_config(unet_shapes, family_config(source, "unet"))
    configs: dict[str, dict[str, Any]] = {"unet": unet, "scheduler": dict(family_config(source, "scheduler"))}
    vae_shapes = strip_prefix(shapes, VAE_PREFIX)
    if vae_shapes:
        configs["vae"] = vae_config(vae_shapes, family_config(source, "vae"))
    big_g = REFINER_BIG_G if refiner else BASE_BIG_G
    if any(k.startswith(big_g) for k in shapes):
        configs["text_encoder_2"] = big_g_config(strip_prefix(shapes, big_g), family_config(source, "text_encoder_2"))
    if not refiner and any(k.startswith(BASE_CLIP_L) for k in shapes):
        configs["text_encoder"], _ = text_config(strip_prefix(shapes, BASE_CLIP_L),
                                                 family_config(source, "text_encoder"), "clip")
    if metadata and METADATA_KEY in metadata:
        for component, hints in json.loads(metadata[METADATA_KEY]).items():
            if component in configs:
                configs[component].update(hints)
    return refiner, configs, up_attention


def inspect_sdxl(path: Path, tensors: TensorFile) -> CheckpointInfo:
    refiner, configs, up_attention = read_sdxl(tensors.shapes, tensors.metadata)
    family = REFINER_NAME if refiner else BASE_NAME
    missing = [c for c in (REFINER_COMPONENTS if refiner else BASE_COMPONENTS) if c not in configs]
    return CheckpointInfo(path, "single", family, configs["scheduler"]["prediction_type"], configs,
                          identity=file_identity(path),
                          extra={"tensors": tensors, "up_attention_levels": up_attention, "missing": missing,
                                 "big_g": REFINER_BIG_G if refiner else BASE_BIG_G})


def build_text_encoder(config: Mapping[str, Any], projection: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig(**clean))


def load_sdxl_component(info: CheckpointInfo, component: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """One component of an SDXL single file: "unet", "vae", "text_encoder" (CLIP-L, base only), "text_encoder_2"."""
    tensors: TensorFile = info.extra["tensors"]
    if component not in info.configs or component == "scheduler":
        raise UnknownCheckpoint(f"{info.path.name} ({info.family}) has no {component}")
    config = info.configs[component]
    if component == "unet":
        model = build_unet(config)
        layers, up = config["layers_per_block"], info.extra["up_attention_levels"]
        names = {k: UNET_PREFIX + xl_unet_key_to_ldm(k, layers, up) for k in model.state_dict()}
        return materialize(model, read_renamed(tensors, names), dtype)
    if component == "vae":
        model = build_vae(config)
        return materialize(model, vae_state(tensors, VAE_PREFIX, model, len(config["block_out_channels"])), dtype)
    if component == "text_encoder":
        model = build_text_encoder(config, projection=False)
        return materialize(model, read_renamed(tensors, {k: BASE_CLIP_L + k for k in model.state_dict()}), dtype)
    prefix = info.extra["big_g"]
    model = build_text_encoder(config, projection=True)
    keys = [k for k in tensors.shapes if k.startswith(prefix)]
    raw = {k[len(prefix):]: v for k, v in tensors.read(keys).items()}
    state = open_clip_to_hf(raw, config["num_hidden_layers"])
    state["text_projection.weight"] = raw["text_projection"].T.contiguous()
    return materialize(model, state, dtype)


def big_g_to_open_clip(text_encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    state = text_encoder.state_dict()
    out = hf_to_open_clip(state, text_encoder.config.num_hidden_layers)
    out["text_projection"] = state["text_projection.weight"].T.contiguous()
    return out


UNET_HINTS = ("attention_head_dim", "addition_time_embed_dim", "sample_size", "act_fn", "norm_eps", "upcast_attention")
TEXT_HINTS = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")
VAE_HINTS = ("scaling_factor", "sample_size", "force_upcast")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def save_sdxl_single_file(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel | None,
                          text_encoder_2: CLIPTextModelWithProjection, path: Path,
                          dtype: torch.dtype | None = None) -> Path:
    """Writes an SDXL base (with `text_encoder`) or refiner (`text_encoder` None) in Stability's single-file layout."""
    config = unet.config
    up_attention = {i for i, t in enumerate(config.up_block_types) if "CrossAttn" in t}
    state = {UNET_PREFIX + xl_unet_key_to_ldm(k, config.layers_per_block, up_attention): v
             for k, v in unet.state_dict().items()}
    state.update(vae_to_ldm(vae))
    big_g = REFINER_BIG_G if text_encoder is None else BASE_BIG_G
    state.update({big_g + k: v for k, v in big_g_to_open_clip(text_encoder_2).items()})
    hints: dict[str, dict[str, Any]] = {
        "unet": {k: _plain(config[k]) for k in UNET_HINTS if k in config},
        "vae": {k: _plain(vae.config[k]) for k in VAE_HINTS if k in vae.config},
        "text_encoder_2": {k: v for k, v in text_encoder_2.config.to_dict().items() if k in TEXT_HINTS},
    }
    if text_encoder is not None:
        state.update({BASE_CLIP_L + k: v for k, v in text_encoder.state_dict().items()
                      if not k.endswith("position_ids")})
        hints["text_encoder"] = {k: v for k, v in text_encoder.config.to_dict().items() if k in TEXT_HINTS}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(hints), "format": "pt"})
    return path


def sdxl_folder_is_refiner(path: Path) -> bool | None:
    """For a diffusers SDXL folder (its UNet has text-time embeddings): whether it is a refiner (no CLIP-L);
    None when it is no SDXL folder."""
    unet = path / "unet" / "config.json"
    if not unet.is_file():
        return None
    config = json.loads(unet.read_text())
    if config.get("addition_embed_type") != "text_time":
        return None
    return not (path / "text_encoder").is_dir()

