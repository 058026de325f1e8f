"""Checkpoint files offline: lazy tensor access, the facts a family reads, and SD1.x-like (LDM layout) loading.

A family's `inspect` reads only headers (key names, shapes, metadata) through `TensorFile` to learn the configs;
components are loaded one at a time (`load_ldm_component` for the SD1.x layout), so a model manager can keep the
UNet, VAE and text encoder separately. `inspect_checkpoint`/`load_component` (nodes/sd/families) ask every
registered family. Pickled files (.ckpt, .pt, .pth, .bin) can run code when loaded and are refused unless the user opts
in with LATENTGRAPH_ALLOW_PICKLE=1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.nodes.sd.detect import Detected, UnknownCheckpoint, family_config, vae_config
from latentgraph.nodes.sd.ldm_keys import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    from_ldm_vae_tensor,
    open_clip_to_hf,
    unet_key_to_ldm,
    vae_key_to_ldm,
)
from safetensors import safe_open

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ALLOW_PICKLE_ENV = "LATENTGRAPH_ALLOW_PICKLE"
COMPONENTS = ("unet", "vae", "text_encoder")


class UnsafeCheckpoint(ValueError):
    """A pickled checkpoint was given without the user's explicit opt-in."""


def pickle_allowed() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "").lower() in ("1", "true", "yes")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not pickle_allowed():
        raise UnsafeCheckpoint(
            f"{path.name} is a pickled checkpoint: loading it can run arbitrary code hidden in the file. "
            f"Use a .safetensors version of it, or, only for a file you trust, set {ALLOW_PICKLE_ENV}=1 to load it.")


def file_identity(path: Path) -> str:
    """A cheap name for a file's (or folder's) current content: path, size and modification time."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        stamp = ",".join(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        return f"{path}|{stamp}"
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class TensorFile:
    """Lazy access to the tensors of one checkpoint file: shapes without reading data, tensors one by one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._state: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() in (".safetensors", ".sft"):
            with safe_open(str(self.path), framework="pt") as f:
                self.metadata: dict[str, str] = f.metadata() or {}
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            refuse_pickle(self.path)
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            self.metadata = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}

    @property
    def lazy(self) -> bool:
        """Whether tensors are read from disk on demand (safetensors) rather than held in memory (pickles)."""
        return self._state is None

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        if self._state is not None:
            return {k: self._state[k] for k in keys}
        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def read_one(self, key: str) -> torch.Tensor:
        return self.read([key])[key]


@dataclass
class CheckpointInfo:
    """A checkpoint's location, family and the configs needed to build each component."""

    path: Path
    kind: str  # "single" or "diffusers"
    family: str
    prediction_type: str
    configs: dict[str, dict[str, Any]]
    detected: Detected | None = None
    identity: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and \
        ((path / "unet").is_dir() or (path / "transformer").is_dir())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def materialize(model: torch.nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """Fills a model built on the meta device with `state`, refusing missing or unexpected weights."""
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise UnknownCheckpoint(f"{type(model).__name__} weights do not fit the detected config: "
                                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True, strict=True)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            if not name.endswith("position_ids"):
                raise UnknownCheckpoint(f"{type(model).__name__} buffer {name} has no value")
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                  persistent=False)
    return model.eval().requires_grad_(False)


def build_unet(config: Mapping[str, Any]) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def build_vae(config: Mapping[str, Any]) -> AutoencoderKL:
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        return AutoencoderKL.from_config(dict(config))


def build_text_encoder(config: Mapping[str, Any]) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return CLIPTextModel(CLIPTextConfig(**clean))


def unet_state(info: CheckpointInfo, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    det = info.detected
    layers = det.unet["layers_per_block"]
    names = {k: UNET_PREFIX + unet_key_to_ldm(k, layers, det.up_attention_levels) for k in model.state_dict()}
    return read_renamed(info.extra["tensors"], names)


def read_renamed(tensors: TensorFile, names: Mapping[str, str],
                  convert: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    absent = [ldm for ldm in names.values() if ldm not in tensors.shapes]
    if absent:
        raise UnknownCheckpoint(f"{tensors.path.name} lacks weights the detected model needs: {absent[:5]}")
    loaded = tensors.read(list(names.values()))
    return {k: convert(ldm, loaded[ldm]) if convert else loaded[ldm] for k, ldm in names.items()}


def vae_state(tensors: TensorFile, prefix: str, model: torch.nn.Module, levels: int) -> dict[str, torch.Tensor]:
    names = {k: prefix + vae_key_to_ldm(k, levels) for k in model.state_dict()}
    return read_renamed(tensors, names, lambda ldm, t: from_ldm_vae_tensor(ldm, t))


def _bare(key: str) -> str:
    """CLIPTextModel weight names without the `text_model.` level (transformers 5 drops it, older files keep it)."""
    return key[len("text_model."):] if key.startswith("text_model.") else key


def text_state(info: CheckpointInfo, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    det, tensors = info.detected, info.extra["tensors"]
    wanted = {_bare(k): k for k in model.state_dict()}
    if det.text_layout == "open_clip":
        keys = [k for k in tensors.shapes if k.startswith(OPEN_CLIP_PREFIX)]
        raw = {k[len(OPEN_CLIP_PREFIX):]: v for k, v in tensors.read(keys).items()}
        converted = open_clip_to_hf(raw, det.text_encoder["num_hidden_layers"])
        return {wanted.get(_bare(k), k): v for k, v in converted.items()}
    inner = "text_model." if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in tensors.shapes else ""
    names = {model_key: CLIP_PREFIX + inner + bare for bare, model_key in wanted.items()}
    return read_renamed(tensors, names)


def load_ldm_component(info: CheckpointInfo, component: str, dtype: torch.dtype = torch.float32,
                       ) -> torch.nn.Module:
    """One component ("unet", "vae" or "text_encoder") of an SD1.x-like checkpoint, on the CPU, in eval mode."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}")
    if info.kind == "diffusers":
        return load_diffusers_component(info.path, component, dtype)
    config = info.configs[component]
    if component == "unet":
        model = build_unet(config)
        return materialize(model, unet_state(info, model), dtype)
    if component == "vae":
        model = build_vae(config)
        levels = len(config["block_out_channels"])
        return materialize(model, vae_state(info.extra["tensors"], VAE_PREFIX, model, levels), dtype)
    model = build_text_encoder(config)
    return materialize(model, text_state(info, model), dtype)


def load_diffusers_component(path: Path, component: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    folder = path / component
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        for pickled in folder.glob("*.bin"):
            refuse_pickle(pickled)
    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[component]
    model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=bool(weights), torch_dtype=dtype)
    return model.eval().requires_grad_(False)


def load_vae_file(path: Path, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A standalone VAE file in LDM naming (encoder.down.*, optionally under first_stage_model.) or diffusers naming."""
    tensors = TensorFile(path)
    shapes = tensors.shapes
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in shapes) else ""
    base = family_config("sd1", "vae")
    if any(k.startswith(prefix + "encoder.down_blocks.") for k in shapes):
        levels = len({m[1] for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k[len(prefix):]))})
        renamed = {vae_key_to_ldm(k[len(prefix):], levels): v for k, v in shapes.items() if k.startswith(prefix)}
        model = build_vae(vae_config(renamed, base))
        state = tensors.read([prefix + k for k in model.state_dict()])
        return materialize(model, {k[len(prefix):]: v for k, v in state.items()}, dtype)
    config = vae_config({k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}, base)
    model = build_vae(config)
    return materialize(model, vae_state(tensors, prefix, model, len(config["block_out_channels"])), dtype)

