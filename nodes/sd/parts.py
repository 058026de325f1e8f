"""Handles and loaders shared by the multi-encoder families (SDXL base and refiner, SD3; nodes/sd/families/).

`Part` names a loadable model: a component of a family's checkpoint or a standalone MMDiT or text encoder file
(ComfyUI's separate files). `MultiClipHandle` is a CLIP made of several text encoders used together, its family
turning them into conditioning; `FlowModelHandle` is a flow-matching MODEL that also knows its latent shift.
Diffusers folders of these families are read and loaded here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile, file_identity, refuse_pickle
from latentgraph.nodes.sd.detect import METADATA_KEY, UnknownCheckpoint, family_config
from latentgraph.nodes.sd.devices import weight_dtype
from latentgraph.nodes.sd.family import Family
from latentgraph.nodes.sd.handles import HANDLE_BYTES, ModelHandle, checkpoint_info, model_manager
from latentgraph.nodes.sd.models import ModelManager
from latentgraph.nodes.sd.sd3 import (
    clip_config,
    is_sd3_transformer,
    load_text_model,
    load_transformer,
    t5_config,
    text_file_kind,
    transformer_config,
)

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel

T5_TOKENIZER_DIR = "t5_tokenizer"

def _folder_classes() -> dict[str, type]:
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import T5EncoderModel
    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "transformer": SD3Transformer2DModel,
            "text_encoder_3": T5EncoderModel}


def folder_info(path: Path, name: str, scheduler_base: dict[str, Any], prediction: str | None = None,
                ) -> CheckpointInfo:
    """The facts of a diffusers folder of family `name`: its components' configs, and the scheduler's over the
    family's shipped one; `prediction` None reads it from the scheduler (eps when unsaid)."""
    configs = {p.parent.name: json.loads(p.read_text()) for p in path.glob("*/config.json")}
    scheduler_file = next((path / "scheduler").glob("*.json"), None) if (path / "scheduler").is_dir() else None
    configs["scheduler"] = dict(scheduler_base)
    if scheduler_file is not None:
        configs["scheduler"].update({k: v for k, v in json.loads(scheduler_file.read_text()).items()
                                     if not k.startswith("_")})
    prediction = prediction or configs["scheduler"].get("prediction_type", "epsilon")
    return CheckpointInfo(path, "diffusers", name, prediction, configs, identity=file_identity(path))


def load_folder_component(info: CheckpointInfo, component: str, dtype: torch.dtype, projection: bool,
                          ) -> torch.nn.Module:
    """One component of a diffusers folder, on the CPU, in eval mode; a CLIP text encoder with its projection
    when `projection`."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    folder = info.path / component
    if not folder.is_dir():
        raise UnknownCheckpoint(f"{info.path.name} has no {component} folder")
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        for pickled in folder.glob("*.bin"):
            refuse_pickle(pickled)
    cls = _folder_classes().get(component)
    if cls is None:
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=bool(weights), torch_dtype=dtype)
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class Part:
    """A loadable model: one component of a checkpoint, or a standalone transformer or text encoder file."""

    path: Path
    identity: str
    part: str  # a checkpoint component name, "transformer_file" or "text_file"
    dtype: torch.dtype
    family: Family | None = None  # who loads a checkpoint component

    @property
    def key(self) -> str:
        return f"{self.identity}#{self.part}#{self.dtype}"

    def loader(self, env: Environment) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            if self.part == "transformer_file":
                return load_transformer_file(self.path, self.dtype)
            if self.part == "text_file":
                return load_text_encoder_file(self.path, self.dtype)
            if self.family is None:
                raise ValueError(f"{self.part} of {self.path.name}: no family to load it")
            info = checkpoint_info(env, self.path, self.identity, self.family)
            return self.family.load_component(info, self.part, self.dtype)
        return load


def part(path: Path, identity: str, name: str, manager: ModelManager, family: Family | None = None) -> Part:
    return Part(Path(path), identity, name, weight_dtype(manager.device, fragile=name == "vae"), family)


def _hints(tensors: TensorFile) -> dict[str, Any]:
    return json.loads(tensors.metadata[METADATA_KEY]) if METADATA_KEY in tensors.metadata else {}


def load_transformer_file(path: Path, dtype: torch.dtype) -> SD3Transformer2DModel:
    """A standalone MMDiT file (ComfyUI's diffusion_models), with or without the model.diffusion_model. prefix."""
    tensors = TensorFile(path)
    prefix = "model.diffusion_model." if is_sd3_transformer(tensors.shapes) else ""
    if not is_sd3_transformer(tensors.shapes, prefix):
        raise UnknownCheckpoint(f"{Path(path).name}: no SD3 MMDiT weights (joint_blocks.*) found")
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


@dataclass(frozen=True)
class MultiClipHandle:
    """CLIP of the multi-encoder families: SDXL (CLIP-L + bigG; the refiner bigG only), SD3 (CLIP-L + CLIP-G, T5
    when provided). The family turns the encoders' outputs into conditioning (`encode_text`)."""

    encoders: tuple[tuple[str, Part], ...]  # (role, part), role "clip_l", "clip_g" or "t5"
    env: Environment = field(compare=False, repr=False)
    family: Any = None  # the Family; it implements encode_text(handle, models, text, folders, text_l)
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
        raise ValueError(f"LoRA on {self.family.label} text encoders is not supported yet")

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        """The first CLIP encoder (CLIPSetLastLayer reads its depth)."""
        clip = next((p for role, p in self.encoders if role != "t5"), None)
        if clip is None:
            raise ValueError(self.missing("a CLIP text encoder"))
        with self.manager.use(clip.key, clip.loader(self.env)) as encoder:
            yield encoder

    @contextmanager
    def _all(self) -> Iterator[dict[str, torch.nn.Module]]:
        with ExitStack() as stack:
            yield {role: stack.enter_context(self.manager.use(p.key, p.loader(self.env))) for role, p in self.encoders}

    def missing(self, what: str) -> str:
        return f"this {self.family.name} CLIP lacks {what}; load the text encoders with {self.family.clip_loaders}"

    def encode(self, text: str, folders: Folders | None = None, text_l: str | None = None, **per_encoder: Any,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, pooled) for the family's denoiser; SDXL's `text_l` defaults to the same prompt; `per_encoder`
        options go to the family (SD3's per-encoder prompts of CLIPTextEncodeSD3)."""
        with self._all() as models:
            return self.family.encode_text(self, models, text, folders, text_l, **per_encoder)
