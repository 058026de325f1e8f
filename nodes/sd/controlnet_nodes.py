"""ControlNet nodes with ComfyUI's names, inputs and semantics: ControlNetLoader, DiffControlNetLoader,
ControlNetApply (the old node, deprecated in ComfyUI's menus but in many shared workflows) and
ControlNetApplyAdvanced. The mechanics (files, the control chain, the sampler's residuals) are in
nodes/sd/controlnet.py.

Files come from models/controlnet (ComfyUI's folder; models/t2i_adapter is searched too, as ComfyUI lists both):
single files and diffusers folders (a folder with config.json and diffusion_pytorch_model.safetensors). A file that
is no ControlNet, or a pickle without the user's opt-in, is refused at validation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Conditioning, Image, Model, Socket, Vae
from latentgraph.nodes.sd.checkpoint import UnsafeCheckpoint, file_identity
from latentgraph.nodes.sd.controlnet import (
    ControlNetHandle,
    NotAControlNet,
    apply_control,
    describe_file_error,
    inspect_controlnet,
)
from latentgraph.nodes.sd.devices import weight_dtype
from latentgraph.nodes.sd.handles import model_manager

ControlNet = Annotated[Any, Socket("CONTROL_NET")]
FOLDER = "controlnet"
EXTRA_FOLDER = "t2i_adapter"


def setup(env: Environment) -> None:
    """ComfyUI lists models/t2i_adapter with the ControlNets."""
    env.folders.add(FOLDER, env.folders.base_dir / "models" / EXTRA_FOLDER)


def _folders(env: Environment) -> dict[str, Path]:
    """Diffusers ControlNet folders (config.json + weights) one or two levels below each ControlNet folder."""
    found: dict[str, Path] = {}
    for root in env.folders.folders(FOLDER):
        if root.is_dir():
            for config in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
                if any(config.parent.glob("diffusion_pytorch_model*")):
                    found.setdefault(config.parent.relative_to(root).as_posix(), config.parent)
    return found


def controlnet_names(env: Environment) -> list[str]:
    """ControlNet files and diffusers folders (the files inside a folder are not listed on their own)."""
    folders = _folders(env)
    files = [n for n in env.folders.list(FOLDER) if not any(n.startswith(f + "/") for f in folders)]
    return sorted(set(files) | set(folders))


def find_controlnet(env: Environment, name: str) -> Path:
    folder = _folders(env).get(name)
    return folder if folder is not None else env.folders.find(FOLDER, name)


def _fingerprint(env: Environment, name: str) -> str | None:
    try:
        return hashlib.sha256(file_identity(find_controlnet(env, name)).encode()).hexdigest()
    except (FileNotFoundError, OSError):
        return None


def _check_file(env: Environment, name: Any, with_model: bool) -> list[tuple[str, str]]:
    """Refuses, before anything runs, a file that is no ControlNet, a pickle without the opt-in, and a difference
    ControlNet without the model it adds to."""
    if not isinstance(name, str):
        return []
    try:
        path = find_controlnet(env, name)
    except FileNotFoundError:
        return []  # the choices check names the missing file
    try:
        found = inspect_controlnet(path)
    except (NotAControlNet, UnsafeCheckpoint, OSError, ValueError) as error:
        return [("control_net_name", describe_file_error(path, error))]
    if found.difference and not with_model:
        return [("control_net_name", f"{path.name} is a difference ControlNet: load it with DiffControlNetLoader "
                                     f"and the model it was made for")]
    return []


def _handle(env: Environment, name: str, model: Any = None) -> ControlNetHandle:
    path = find_controlnet(env, name)
    manager = model_manager(env)
    base = None
    if model is not None and inspect_controlnet(path).difference:
        base = model.component
    handle = ControlNetHandle(path, file_identity(path), weight_dtype(manager.device), env, base)
    handle.preload()
    return handle


class ControlNetLoader(Node):
    """Loads a ControlNet (single file in the original or diffusers layout, or a diffusers folder)."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load ControlNet Model"
    RETURN_TYPES = ("CONTROL_NET",)

    control_net_name: str = Input(choices=controlnet_names)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        return _check_file(env, inputs.get("control_net_name"), with_model=False)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, inputs["control_net_name"])

    def execute(self, ctx: RunContext) -> tuple:
        return (_handle(ctx.env, self.control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet for a model: a "difference" ControlNet gets the model's UNet weights added to the weights
    both share (as ComfyUI does); any other ControlNet loads as with ControlNetLoader."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load ControlNet Model (diff)"
    RETURN_TYPES = ("CONTROL_NET",)

    model: Model
    control_net_name: str = Input(choices=controlnet_names)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        return _check_file(env, inputs.get("control_net_name"), with_model=True)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return _fingerprint(env, inputs["control_net_name"])

    def execute(self, ctx: RunContext) -> tuple:
        return (_handle(ctx.env, self.control_net_name, self.model),)


class ControlNetApply(Node):
    """Applies a ControlNet to one conditioning; as in ComfyUI, the sampler also applies it to negative entries
    that have no ControlNet of their own."""

    CATEGORY = "conditioning/controlnet"
    DISPLAY_NAME = "Apply ControlNet (DEPRECATED)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning: Conditioning
    control_net: ControlNet
    image: Image
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        if self.strength == 0:
            return (self.conditioning,)
        return (apply_control(self.conditioning, self.control_net, self.image, self.strength, 0.0, 1.0, {},
                              to_uncond=True),)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning, between start_percent and end_percent of
    the sampling; applied again, ControlNets chain and their residuals add."""

    CATEGORY = "conditioning/controlnet"
    DISPLAY_NAME = "Apply ControlNet"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    positive: Conditioning
    negative: Conditioning
    control_net: ControlNet
    image: Image
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)
    start_percent: float = Input(0.0, ge=0.0, le=1.0, step=0.001)
    end_percent: float = Input(1.0, ge=0.0, le=1.0, step=0.001)
    vae: Vae = None

    def execute(self, ctx: RunContext) -> tuple:
        """`vae` is used by ControlNets whose hint is a latent (SD3's, Flux's); the UNet ControlNets read here take
        the hint image as pixels, so it is accepted and not needed."""
        if self.strength == 0:
            return self.positive, self.negative
        shared: dict[int, Any] = {}
        return tuple(apply_control(side, self.control_net, self.image, self.strength, self.start_percent,
                                   self.end_percent, shared, to_uncond=False)
                     for side in (self.positive, self.negative))
