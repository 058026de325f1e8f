"""Loader nodes: checkpoints, standalone VAEs and LoRAs, as light handles onto the shared model manager."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Clip, Model
from latentgraph.nodes.sd.checkpoint import file_identity, is_diffusers_folder
from latentgraph.nodes.sd.families import checkpoint_handles, inspect_checkpoint
from latentgraph.nodes.sd.handles import VaeHandle, checkpoint_infos, component, model_manager
from latentgraph.nodes.sd.lora import LoraPatch, addressed_modules, load_lora_file
from latentgraph.nodes.sd.model_paths import add_extra_model_paths

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = "latentgraph-demo.safetensors"


def setup(env: Environment) -> None:
    """Makes the bundled model files and the folders of extra_model_paths.yaml visible.

    The bundled example input images are copied into an input folder that lacks them, as ComfyUI ships its
    example.png, so that the saved img2img and inpaint workflows run on a fresh base directory.
    """
    env.folders.add("checkpoints", ASSETS / "checkpoints")
    env.folders.add("loras", ASSETS / "loras")
    add_extra_model_paths(env.folders, env.base_dir)
    for example in sorted((ASSETS / "input").glob("*.png")):
        target = env.folders.input_dir / example.name
        if not target.exists():
            shutil.copyfile(example, target)


def _diffusers_folders(env: Environment) -> dict[str, Path]:
    """Diffusers folders up to two levels below each checkpoint folder (no walk through a whole collection)."""
    found: dict[str, Path] = {}
    for root in env.folders.folders("checkpoints"):
        if root.is_dir():
            for index in sorted([*root.glob("*/model_index.json"), *root.glob("*/*/model_index.json")]):
                if is_diffusers_folder(index.parent):
                    found.setdefault(index.parent.relative_to(root).as_posix(), index.parent)
    return found


def checkpoint_names(env: Environment) -> list[str]:
    """Checkpoint files and diffusers folders (the files inside a diffusers folder are not listed on their own)."""
    folders = _diffusers_folders(env)
    files = [n for n in env.folders.list("checkpoints") if not any(n.startswith(f + "/") for f in folders)]
    return sorted(set(files) | set(folders))


def find_checkpoint(env: Environment, name: str) -> Path:
    """A checkpoint file, or a diffusers folder, by its listed name."""
    try:
        return env.folders.find("checkpoints", name)
    except FileNotFoundError:
        for root in env.folders.folders("checkpoints"):
            candidate = (root / name).resolve()
            if candidate.is_relative_to(root.resolve()) and is_diffusers_folder(candidate):
                return candidate
        raise


def _fingerprint(path_of: Any) -> str | None:
    try:
        return hashlib.sha256(file_identity(path_of()).encode()).hexdigest()
    except (FileNotFoundError, OSError):
        return None


class CheckpointLoaderSimple(Node):
    """Loads a checkpoint of any installed model family (single file or diffusers folder): its denoiser, text
    encoders and VAE."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load Checkpoint"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    ckpt_name: str = Input(DEFAULT_CHECKPOINT, choices=checkpoint_names,
                           tooltip="The checkpoint (model) to load.")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(lambda: find_checkpoint(env, inputs["ckpt_name"]))

    def execute(self, ctx: RunContext) -> tuple:
        env = ctx.env
        path = find_checkpoint(env, self.ckpt_name)
        identity = file_identity(path)
        info = checkpoint_infos(env).get(path, identity, inspect_checkpoint)
        handles = checkpoint_handles(info, env)  # the checkpoint's family gives them
        for handle in handles:
            handle.preload()
        return handles


class VAELoader(Node):
    """Loads a standalone VAE file (LDM or diffusers naming) from models/vae."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load VAE"
    RETURN_TYPES = ("VAE",)

    vae_name: str = Input(choices=lambda env: env.folders.list("vae"))

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(lambda: env.folders.find("vae", inputs["vae_name"]))

    def execute(self, ctx: RunContext) -> tuple:
        path = ctx.env.folders.find("vae", self.vae_name)
        vae = VaeHandle(component(path, file_identity(path), "vae_file", model_manager(ctx.env)), ctx.env)
        vae.preload()
        return (vae,)


class LoraLoader(Node):
    """Applies a LoRA to the model and the text encoder; the shared base weights are left untouched."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load LoRA (Model and CLIP)"
    RETURN_TYPES = ("MODEL", "CLIP")

    model: Model
    clip: Clip
    lora_name: str = Input(choices=lambda env: env.folders.list("loras"))
    strength_model: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)
    strength_clip: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(lambda: env.folders.find("loras", inputs["lora_name"]))

    def execute(self, ctx: RunContext) -> tuple:
        if self.strength_model == 0 and self.strength_clip == 0:
            return self.model, self.clip
        path = ctx.env.folders.find("loras", self.lora_name)
        identity = file_identity(path)
        tensors = load_lora_file(path, identity, model_manager(ctx.env))
        unet = self.model.manager.get(self.model.component.key, self.model.component.loader(ctx.env))
        text = self.clip.manager.get(self.clip.component.key, self.clip.component.loader(ctx.env))
        if addressed_modules(tensors, unet, "unet") + addressed_modules(tensors, text, "text_encoder") == 0:
            raise ValueError(f"LoRA {self.lora_name} has no weights for this model's layers "
                             f"(it may be made for another architecture)")
        model = self.model.with_patch(LoraPatch(path, identity, "unet", self.strength_model))
        clip = self.clip.with_patch(LoraPatch(path, identity, "text_encoder", self.strength_clip))
        return model, clip


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the model alone (LoraLoader with the text encoder left as it is): for LoRAs without text
    encoder weights, and for models loaded without a CLIP."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load LoRA"
    RETURN_TYPES = ("MODEL",)

    model: Model
    lora_name: str = Input(choices=lambda env: env.folders.list("loras"))
    strength_model: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(lambda: env.folders.find("loras", inputs["lora_name"]))

    def execute(self, ctx: RunContext) -> tuple:
        if self.strength_model == 0:
            return (self.model,)
        path = ctx.env.folders.find("loras", self.lora_name)
        identity = file_identity(path)
        tensors = load_lora_file(path, identity, model_manager(ctx.env))
        unet = self.model.manager.get(self.model.component.key, self.model.component.loader(ctx.env))
        if addressed_modules(tensors, unet, "unet") == 0:
            raise ValueError(f"LoRA {self.lora_name} has no weights for this model's layers "
                             f"(it may be made for another architecture, or hold text encoder weights only)")
        return (self.model.with_patch(LoraPatch(path, identity, "unet", self.strength_model)),)
