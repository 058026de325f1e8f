"""SD3 nodes and loaders for separate model files, with ComfyUI's names and inputs: 16-channel empty latents, the
flow shift, per-encoder prompts (CLIPTextEncodeSD3), the diffusion model alone (UNETLoader) and text encoders alone
(CLIPLoader, DualCLIPLoader, TripleCLIPLoader)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Clip, Model
from latentgraph.nodes.pixel_budget import over_budget
from latentgraph.nodes.sd.checkpoint import file_identity
from latentgraph.nodes.sd.families import diffusion_model, family, sd3
from latentgraph.nodes.sd.parts import FlowModelHandle, MultiClipHandle, find_t5_tokenizer, part, text_file_role
from latentgraph.nodes.sd.services import model_manager

MAX_RESOLUTION = 16384
SD3_LATENT_CHANNELS = 16
G_WIDTH = 1280


def _names(*kinds: str) -> Callable[[Environment], list[str]]:
    def names(env: Environment) -> list[str]:
        return sorted({n for kind in kinds for n in env.folders.list(kind)})
    return names


def _find(env: Environment, name: str, *kinds: str) -> Path:
    for kind in kinds:
        try:
            return env.folders.find(kind, name)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{name!r} not found in models/{' or models/'.join(kinds)}")


def _fingerprint(env: Environment, names: list[str], *kinds: str) -> str | None:
    try:
        return hashlib.sha256("|".join(file_identity(_find(env, n, *kinds)) for n in names).encode()).hexdigest()
    except (FileNotFoundError, OSError):
        return None


TEXT_KINDS = ("text_encoders", "clip")
UNET_KINDS = ("diffusion_models", "unet")


class EmptySD3LatentImage(Node):
    """An empty 16-channel latent image for SD3, to be filled by the sampler."""

    CATEGORY = "latent/sd3"
    RETURN_TYPES = ("LATENT",)

    width: int = Input(1024, ge=16, le=MAX_RESOLUTION, step=16)
    height: int = Input(1024, ge=16, le=MAX_RESOLUTION, step=16)
    batch_size: int = Input(1, ge=1, le=4096)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """The pixel budget, before anything is allocated (the VAE decode of a huge latent takes the memory)."""
        problem = over_budget(inputs["width"], inputs["height"], inputs["batch_size"], "the decoded batch")
        return [("width", problem)] if problem else []

    def execute(self, ctx: RunContext) -> tuple:
        shape = [self.batch_size, SD3_LATENT_CHANNELS, self.height // 8, self.width // 8]
        return ({"samples": torch.zeros(shape)},)


class ModelSamplingSD3(Node):
    """Sets the shift of a flow-matching model's sigma schedule (SD3 uses 3.0; higher spends more steps on noise)."""

    CATEGORY = "advanced/model"
    RETURN_TYPES = ("MODEL",)

    model: Model
    shift: float = Input(3.0, ge=0.0, le=100.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        if not isinstance(self.model, FlowModelHandle):
            raise ValueError(f"ModelSamplingSD3 applies to flow-matching models (SD3), not to a "
                             f"{getattr(getattr(self.model, 'family', None), 'name', '?')} model")
        return (self.model.with_shift(self.shift),)


class CLIPTextEncodeSD3(Node):
    """Encodes SD3 prompts with a prompt per text encoder (CLIP-L, CLIP-G, T5-XXL). With empty_padding "none" an
    empty prompt leaves its part out, as in ComfyUI: both CLIP prompts empty, no CLIP tokens (and a zero pooled
    vector); the T5 prompt empty, no T5 tokens. "empty_prompt" encodes empty prompts like any other."""

    CATEGORY = "advanced/conditioning"
    DISPLAY_NAME = "CLIP Text Encode (SD3)"
    RETURN_TYPES = ("CONDITIONING",)

    clip: Clip
    clip_l: str = Input("", multiline=True, dynamic_prompts=True)
    clip_g: str = Input("", multiline=True, dynamic_prompts=True)
    t5xxl: str = Input("", multiline=True, dynamic_prompts=True)
    empty_padding: Literal["none", "empty_prompt"] = Input("none")

    def execute(self, ctx: RunContext) -> tuple:
        if not isinstance(self.clip, MultiClipHandle) or self.clip.family is not sd3.FAMILY:
            found = getattr(getattr(self.clip, "family", None), "name", type(self.clip).__name__)
            raise ValueError(f"CLIPTextEncodeSD3 needs the CLIP of an SD3 model, got a {found} CLIP")
        pad = self.empty_padding != "none"
        context, pooled = self.clip.encode(self.clip_l, ctx.env.folders, text_g=self.clip_g, text_t5=self.t5xxl,
                                           with_clip=pad or bool(self.clip_l) or bool(self.clip_g),
                                           with_t5=pad or bool(self.t5xxl))
        return ([[context, {"pooled_output": pooled}]],)


class UNETLoader(Node):
    """Loads a diffusion model alone (SD3 MMDiT or SDXL UNet file) from models/diffusion_models or models/unet."""

    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "Load Diffusion Model"
    RETURN_TYPES = ("MODEL",)

    unet_name: str = Input(choices=_names(*UNET_KINDS))
    weight_dtype: Literal["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"] = Input("default")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, [inputs["unet_name"]], *UNET_KINDS)

    def execute(self, ctx: RunContext) -> tuple:
        if self.weight_dtype != "default":
            raise ValueError(f"weight_dtype {self.weight_dtype} is not supported yet; use default")
        model = diffusion_model(_find(ctx.env, self.unet_name, *UNET_KINDS), ctx.env)  # the file's family's MODEL
        model.preload()
        return (model,)


def _clip_handle(env: Environment, paths: list[Path], family_name: str) -> MultiClipHandle:
    """Assigns each text encoder file its role: T5 by its keys; of two CLIPs the narrower is CLIP-L (the first
    when equal); a single CLIP is CLIP-G from 1280 wide."""
    manager = model_manager(env)
    kinds = [(p, *text_file_role(p)) for p in paths]
    clips = [(p, w) for p, kind, w in kinds if kind == "clip"]
    t5 = [p for p, kind, _ in kinds if kind == "t5"]
    roles: list[tuple[str, Path]] = []
    if len(clips) == 2:
        first, second = clips if clips[0][1] <= clips[1][1] else clips[::-1]
        roles += [("clip_l", first[0]), ("clip_g", second[0])]
    elif len(clips) == 1:
        roles.append(("clip_g" if clips[0][1] >= G_WIDTH else "clip_l", clips[0][0]))
    elif len(clips) > 2:
        raise ValueError("at most two CLIP text encoders (CLIP-L and CLIP-G) can be combined")
    if len(t5) > 1:
        raise ValueError("at most one T5 text encoder can be used")
    roles += [("t5", p) for p in t5]
    chosen = family(family_name)
    if t5 and "t5" not in chosen.text_roles:
        raise ValueError(f"{chosen.label} uses no T5 text encoder")
    tokenizer = find_t5_tokenizer(env.folders, t5[0].parent) if t5 else None
    encoders = tuple((role, part(p, file_identity(p), "text_file", manager)) for role, p in roles)
    clip = MultiClipHandle(encoders, env, family=chosen, t5_tokenizer=tokenizer)
    clip.preload()
    return clip


class CLIPLoader(Node):
    """Loads one text encoder file for SD3 (CLIP-L, CLIP-G or T5); the missing CLIPs contribute zeros."""

    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "Load CLIP"
    RETURN_TYPES = ("CLIP",)

    clip_name: str = Input(choices=_names(*TEXT_KINDS))
    type: Literal["sd3"] = Input("sd3")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, [inputs["clip_name"]], *TEXT_KINDS)

    def execute(self, ctx: RunContext) -> tuple:
        return (_clip_handle(ctx.env, [_find(ctx.env, self.clip_name, *TEXT_KINDS)], self.type),)


class DualCLIPLoader(Node):
    """Loads two text encoder files: SDXL's CLIP-L and CLIP-G, or two of SD3's three."""

    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "Load CLIP (Dual)"
    RETURN_TYPES = ("CLIP",)

    clip_name1: str = Input(choices=_names(*TEXT_KINDS))
    clip_name2: str = Input(choices=_names(*TEXT_KINDS))
    type: Literal["sdxl", "sd3"] = Input("sdxl")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, [inputs["clip_name1"], inputs["clip_name2"]], *TEXT_KINDS)

    def execute(self, ctx: RunContext) -> tuple:
        paths = [_find(ctx.env, n, *TEXT_KINDS) for n in (self.clip_name1, self.clip_name2)]
        return (_clip_handle(ctx.env, paths, self.type),)


class TripleCLIPLoader(Node):
    """Loads SD3's three text encoders from separate files: CLIP-L, CLIP-G and T5-XXL."""

    CATEGORY = "advanced/loaders"
    DISPLAY_NAME = "Load CLIP (Triple)"
    RETURN_TYPES = ("CLIP",)

    clip_name1: str = Input(choices=_names(*TEXT_KINDS))
    clip_name2: str = Input(choices=_names(*TEXT_KINDS))
    clip_name3: str = Input(choices=_names(*TEXT_KINDS))

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, [inputs[f"clip_name{i}"] for i in (1, 2, 3)], *TEXT_KINDS)

    def execute(self, ctx: RunContext) -> tuple:
        paths = [_find(ctx.env, n, *TEXT_KINDS) for n in (self.clip_name1, self.clip_name2, self.clip_name3)]
        return (_clip_handle(ctx.env, paths, "sd3"),)
