"""SDXL and SD3 on the shared runtime: recognising their checkpoints and giving MODEL, CLIP and VAE handles.

The SD1.x/SD2.x loader (nodes/sd/checkpoint.py) asks `inspect_family` first and `load_family_component` for the
parts of these families; CheckpointLoaderSimple asks `family_handles`. SDXL's and SD3's CLIP is several text
encoders used together (`MultiClipHandle`); SD3's MODEL also knows its latent shift (`FlowModelHandle`). A file
that is none of the known families gets an error naming what it holds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile, file_identity, refuse_pickle
from latentgraph.nodes.sd.detect import METADATA_KEY, Shapes, UnknownCheckpoint, family_config
from latentgraph.nodes.sd.devices import weight_dtype
from latentgraph.nodes.sd.flow import FlowSpace
from latentgraph.nodes.sd.handles import HANDLE_BYTES, ModelHandle, VaeHandle, checkpoint_info, model_manager
from latentgraph.nodes.sd.models import ModelManager
from latentgraph.nodes.sd.multiclip import sd3_conditioning, sdxl_conditioning
from latentgraph.nodes.sd.noise_space import NoiseSpace
from latentgraph.nodes.sd.sd3 import (
    clip_config,
    inspect_sd3,
    is_sd3_folder,
    is_sd3_transformer,
    load_sd3_component,
    load_text_model,
    load_transformer,
    t5_config,
    text_file_kind,
    transformer_config,
)
from latentgraph.nodes.sd.sdxl import inspect_sdxl, is_sdxl, load_sdxl_component, sdxl_family_of_folder

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel

FAMILIES = ("sdxl", "sdxl_refiner", "sd3")
T5_TOKENIZER_DIR = "t5_tokenizer"

def _folder_classes() -> dict[str, type]:
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import T5EncoderModel
    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "transformer": SD3Transformer2DModel,
            "text_encoder_3": T5EncoderModel}


def describe_keys(shapes: Shapes) -> str:
    """What a state dict holds, by top-level key prefix, for error messages."""
    counts = Counter(".".join(k.split(".")[:2]) if k.split(".")[0] in ("model", "conditioner", "text_encoders")
                     else k.split(".")[0] for k in shapes)
    return ", ".join(f"{prefix} ({n} tensors)" for prefix, n in counts.most_common(8)) or "no tensors"


def unknown_file(path: Path, shapes: Shapes, reason: str) -> UnknownCheckpoint:
    return UnknownCheckpoint(
        f"{Path(path).name} is not a checkpoint of a known family (SD1.x, SD2.x, SDXL base, SDXL refiner, SD3): "
        f"{reason}. It holds: {describe_keys(shapes)}")


def _folder_info(path: Path) -> CheckpointInfo | None:
    family = "sd3" if is_sd3_folder(path) else sdxl_family_of_folder(path)
    if family is None:
        return None
    configs = {p.parent.name: json.loads(p.read_text()) for p in path.glob("*/config.json")}
    scheduler_file = next((path / "scheduler").glob("*.json"), None) if (path / "scheduler").is_dir() else None
    base = "sd3" if family == "sd3" else "sdxl_base"
    configs["scheduler"] = dict(family_config(base, "scheduler"))
    if scheduler_file is not None:
        configs["scheduler"].update({k: v for k, v in json.loads(scheduler_file.read_text()).items()
                                     if not k.startswith("_")})
    prediction = "flow" if family == "sd3" else configs["scheduler"].get("prediction_type", "epsilon")
    return CheckpointInfo(path, "diffusers", family, prediction, configs, identity=file_identity(path))


def inspect_family(path: Path) -> CheckpointInfo | None:
    """SDXL/SD3 facts of a single file or diffusers folder; None when it belongs to another family."""
    path = Path(path)
    if path.is_dir():
        return _folder_info(path)
    if not path.is_file():
        return None
    tensors = TensorFile(path)
    if is_sd3_transformer(tensors.shapes):
        return inspect_sd3(path, tensors)
    if is_sdxl(tensors.shapes):
        return inspect_sdxl(path, tensors)
    return None


def load_family_component(info: CheckpointInfo, component: str, dtype: torch.dtype = torch.float32
                          ) -> torch.nn.Module:
    """One component of an SDXL or SD3 checkpoint (single file or diffusers folder), on the CPU, in eval mode."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    if info.kind == "diffusers":
        folder = info.path / component
        if not folder.is_dir():
            raise UnknownCheckpoint(f"{info.path.name} has no {component} folder")
        weights = list(folder.glob("*.safetensors"))
        if not weights:
            for pickled in folder.glob("*.bin"):
                refuse_pickle(pickled)
        cls = _folder_classes().get(component)
        if cls is None:
            projection = info.family == "sd3" or component == "text_encoder_2"
            cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=bool(weights),
                                    torch_dtype=dtype)
        return model.eval().requires_grad_(False)
    if info.family == "sd3":
        return load_sd3_component(info, component, dtype)
    return load_sdxl_component(info, component, dtype)


@dataclass(frozen=True)
class Part:
    """A loadable model: one component of a checkpoint, or a standalone transformer or text encoder file."""

    path: Path
    identity: str
    part: str  # a checkpoint component name, "transformer_file" or "text_file"
    dtype: torch.dtype

    @property
    def key(self) -> str:
        return f"{self.identity}#{self.part}#{self.dtype}"

    def loader(self, env: Environment) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            if self.part == "transformer_file":
                return load_transformer_file(self.path, self.dtype)
            if self.part == "text_file":
                return load_text_encoder_file(self.path, self.dtype)
            return load_family_component(checkpoint_info(env, self.path, self.identity), self.part, self.dtype)
        return load


def part(path: Path, identity: str, name: str, manager: ModelManager) -> Part:
    return Part(Path(path), identity, name, weight_dtype(manager.device, fragile=name == "vae"))


def _hints(tensors: TensorFile) -> dict[str, Any]:
    return json.loads(tensors.metadata[METADATA_KEY]) if METADATA_KEY in tensors.metadata else {}


def load_transformer_file(path: Path, dtype: torch.dtype) -> SD3Transformer2DModel:
    """A standalone MMDiT file (ComfyUI's diffusion_models), with or without the model.diffusion_model. prefix."""
    tensors = TensorFile(path)
    prefix = "model.diffusion_model." if is_sd3_transformer(tensors.shapes) else ""
    if not is_sd3_transformer(tensors.shapes, prefix):
        raise unknown_file(path, tensors.shapes, "no SD3 MMDiT weights (joint_blocks.*) found")
    hints = _hints(tensors).get("transformer", {})
    shapes = {k[len(prefix):]: v for k, v in tensors.shapes.items() if k.startswith(prefix)}
    config = transformer_config(shapes, dict(family_config("sd3", "transformer"), **hints))
    config.update(hints)
    return load_transformer(tensors, config, prefix, dtype)


def load_text_encoder_file(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """A standalone CLIP (L or G) or T5 encoder file in Hugging Face naming, as ComfyUI's text_encoders hold them."""
    tensors = TensorFile(path)
    kind, prefix, width = text_file_kind(tensors.shapes)
    shapes = {k[len(prefix):]: v for k, v in tensors.shapes.items() if k.startswith(prefix)}
    hints = _hints(tensors).get("text_encoder", {})
    if kind == "t5":
        config = t5_config(shapes, family_config("sd3", "text_encoder_3"))
        component = "text_encoder_3"
    else:
        config = clip_config(shapes, family_config("sd3", "text_encoder_2" if width >= 1280 else "text_encoder"))
        config.setdefault("projection_dim", width)
        component = "text_encoder"
    config.update(hints)
    return load_text_model(tensors, component, config, prefix, dtype)


def text_file_role(path: Path) -> tuple[str, int]:
    """("t5" or "clip", width) of a standalone text encoder file, from its header."""
    kind, _, width = text_file_kind(TensorFile(path).shapes)
    return kind, width


def find_t5_tokenizer(folders: Folders, near: Path | None = None) -> Path | None:
    """A T5 tokenizer folder the user provided (tokenizer.json or spiece.model): next to the T5 file, or
    models/text_encoders/t5_tokenizer, or models/clip/t5_tokenizer. None when there is none."""
    candidates = [near / T5_TOKENIZER_DIR] if near is not None else []
    for kind in ("text_encoders", "clip"):
        candidates += [folder / T5_TOKENIZER_DIR for folder in folders.folders(kind)]
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file():
            return folder
    return None


def load_t5_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@dataclass(frozen=True)
class FlowModelHandle(ModelHandle):
    """MODEL of a flow-matching family (SD3): the MMDiT, its shifted sigma schedule and its latent shift."""

    latent_shift: float = 0.0

    def with_shift(self, shift: float) -> FlowModelHandle:
        return replace(self, scheduler_config={**self.scheduler_config, "shift": shift})

    def noise_space(self, sampler_name: str, scheduler_name: str) -> NoiseSpace:
        return FlowSpace(sampler_name, scheduler_name, self.scheduler_config, self.latent_scale, self.latent_shift)


@dataclass(frozen=True)
class MultiClipHandle:
    """CLIP of SDXL (CLIP-L + bigG; the refiner bigG only) and SD3 (CLIP-L + CLIP-G, T5 when provided)."""

    encoders: tuple[tuple[str, Part], ...]  # (role, part), role "clip_l", "clip_g" or "t5"
    env: Environment = field(compare=False, repr=False)
    family: str = "sdxl"
    layer: int = -2
    t5_tokenizer: Path | None = None
    patches: tuple = ()

    def cache_bytes(self) -> int:
        return HANDLE_BYTES

    @property
    def manager(self) -> ModelManager:
        return model_manager(self.env)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in self.encoders)

    def preload(self) -> None:
        for _, p in self.encoders:
            self.manager.get(p.key, p.loader(self.env))

    def with_layer(self, layer: int) -> MultiClipHandle:
        return replace(self, layer=layer)

    def with_patch(self, patch: Any) -> MultiClipHandle:
        raise ValueError(f"LoRA on {self.family} text encoders is not supported yet")

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        """The first CLIP encoder (CLIPSetLastLayer reads its depth)."""
        clip = next((p for role, p in self.encoders if role != "t5"), None)
        if clip is None:
            raise ValueError(self._missing("a CLIP text encoder"))
        with self.manager.use(clip.key, clip.loader(self.env)) as encoder:
            yield encoder

    @contextmanager
    def _all(self) -> Iterator[dict[str, torch.nn.Module]]:
        with ExitStack() as stack:
            yield {role: stack.enter_context(self.manager.use(p.key, p.loader(self.env))) for role, p in self.encoders}

    def _missing(self, what: str) -> str:
        loaders = "DualCLIPLoader (type sdxl)" if self.family.startswith("sdxl") else \
            "TripleCLIPLoader or DualCLIPLoader (type sd3)"
        return f"this {self.family} CLIP lacks {what}; load the text encoders with {loaders}"

    def encode(self, text: str, folders: Folders | None = None, text_l: str | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, pooled) for the family's denoiser; SDXL's `text_l` defaults to the same prompt."""
        with self._all() as models:
            if self.family.startswith("sdxl"):
                if "clip_g" not in models or (self.family == "sdxl" and "clip_l" not in models):
                    raise ValueError(self._missing("CLIP-L or CLIP-G"))
                return sdxl_conditioning(text if text_l is None else text_l, text, models.get("clip_l"),
                                         models["clip_g"], self.layer, folders)
            if not models:
                raise ValueError(self._missing("text encoders"))
            t5 = models.get("t5")
            tokenizer = None
            if t5 is not None:
                if self.t5_tokenizer is None:
                    raise ValueError(
                        "T5 weights are loaded but no T5 tokenizer was provided (none can be downloaded): put its "
                        f"tokenizer.json (or spiece.model) in models/text_encoders/{T5_TOKENIZER_DIR}/, or leave T5 "
                        "out (DualCLIPLoader with CLIP-L and CLIP-G runs SD3 without it)")
                tokenizer = load_t5_tokenizer(self.t5_tokenizer)
            return sd3_conditioning(text, models.get("clip_l"), models.get("clip_g"), t5, tokenizer, self.layer,
                                    folders)


def _sd3_roles(info: CheckpointInfo) -> list[tuple[str, str]]:
    names = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5"}
    return [(role, component) for component, role in names.items() if component in info.configs]


def family_handles(info: CheckpointInfo, env: Environment, require_vae: bool = True,
                   ) -> tuple[ModelHandle, MultiClipHandle, VaeHandle | None]:
    """MODEL, CLIP and VAE handles for an SDXL or SD3 checkpoint (CheckpointLoaderSimple)."""
    manager = model_manager(env)
    path, identity = info.path, info.identity
    if "vae" not in info.configs and require_vae:
        raise UnknownCheckpoint(f"{path.name} has no VAE; load one with VAELoader")
    vae_config = info.configs.get("vae") or family_config("sd3" if info.family == "sd3" else "sdxl_base", "vae")
    vae = VaeHandle(part(path, identity, "vae", manager), env) if "vae" in info.configs else None
    scale = float(vae_config.get("scaling_factor", 1.0))
    if info.family == "sd3":
        model: ModelHandle = FlowModelHandle(
            part(path, identity, "transformer", manager), env, scheduler_config=dict(info.configs["scheduler"]),
            family="sd3", latent_scale=scale, latent_shift=float(vae_config.get("shift_factor") or 0.0))
        roles = _sd3_roles(info)
        tokenizer = None
        if any(role == "t5" for role, _ in roles):
            folder = info.path / "tokenizer_3" if info.kind == "diffusers" else None
            tokenizer = folder if folder is not None and folder.is_dir() else find_t5_tokenizer(env.folders,
                                                                                              info.path.parent)
    else:
        model = ModelHandle(part(path, identity, "unet", manager), env,
                            scheduler_config=dict(info.configs["scheduler"]), family=info.family, latent_scale=scale)
        roles = [("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")] if info.family == "sdxl" else \
            [("clip_g", "text_encoder_2")]
        roles = [(role, c) for role, c in roles if c in info.configs]
        tokenizer = None
    clip = MultiClipHandle(tuple((role, part(path, identity, c, manager)) for role, c in roles), env,
                           family=info.family, t5_tokenizer=tokenizer)
    return model, clip, vae
