"""Upscale models (ESRGAN, SwinIR, HAT, DAT, ...) through spandrel, the library ComfyUI uses to read them.

`UpscaleModelLoader` names a file in models/upscale_models and returns a light handle; the weights are loaded
once per file content into the shared model manager. `ImageUpscaleWithModel` runs the model over 512-pixel tiles
overlapping by 32, blended with linear ramps across the overlaps (ComfyUI's tiled_scale, nodes/tiling.py), and
halves the tile after an out-of-memory error down to 128 pixels. Pickled files (.pth, .pt, .ckpt, .bin) are refused
unless the user opts in with LATENTGRAPH_ALLOW_PICKLE=1, and even then are read with torch.load(weights_only=True).

spandrel imports torchvision for two architectures that are not upscalers (LaMa inpainting and RestoreFormer face
restoration). Where torchvision is missing, or is a build that does not match the installed torch, spandrel is
imported with a placeholder for those two imports and files of those two architectures are refused; every other
architecture is spandrel's own code.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image, Socket
from latentgraph.nodes.sd.checkpoint import file_identity, refuse_pickle
from latentgraph.nodes.sd.handles import model_manager
from latentgraph.nodes.tiling import tile_count, tiled_scale
from safetensors.torch import load_file

UpscaleModel = Annotated[Any, Socket("UPSCALE_MODEL")]

TILE = 512
OVERLAP = 32
MIN_TILE = 128
HANDLE_BYTES = 1024
SAFE_SUFFIXES = (".safetensors", ".sft")
NEEDS_TORCHVISION = ("LaMa", "RestoreFormer")
# SwinIR files saved from a DataParallel wrapper: ComfyUI strips the "module." prefix when it sees this key.
DATAPARALLEL_SWINIR_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"

INSTALL_HINT = "upscale models need spandrel: pip install --no-deps spandrel==0.4.2"

_SPANDREL: dict[str, Any] = {}


def _placeholder_torchvision() -> dict[str, types.ModuleType]:
    """Modules standing in for the two torchvision imports spandrel makes; calling them says what is missing."""

    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("this model architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    setattr(functional, "InterpolationMode", enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC"))  # noqa: B010
    setattr(functional, "rotate", missing)  # noqa: B010
    setattr(functional, "normalize", missing)  # noqa: B010
    transforms = types.ModuleType("torchvision.transforms")
    setattr(transforms, "functional", functional)  # noqa: B010
    root = types.ModuleType("torchvision")
    setattr(root, "transforms", transforms)  # noqa: B010
    return {"torchvision": root, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


def spandrel() -> Any:
    """The spandrel module, imported once; see the module docstring for the torchvision placeholder."""
    if "module" not in _SPANDREL:
        try:
            importlib.import_module("torchvision.transforms.functional")
            has_torchvision = True
        except Exception:  # missing, or a build for another torch ("operator torchvision::nms does not exist")
            has_torchvision = False
        if has_torchvision:
            _SPANDREL["module"] = importlib.import_module("spandrel")
        else:
            saved = {name: sys.modules.get(name) for name in _placeholder_torchvision()}
            sys.modules.update(_placeholder_torchvision())
            try:
                _SPANDREL["module"] = importlib.import_module("spandrel")
            finally:  # nothing else in the process may take the placeholder for torchvision
                for name, module in saved.items():
                    if module is None:
                        sys.modules.pop(name, None)
                    else:
                        sys.modules[name] = module
        _SPANDREL["torchvision"] = has_torchvision
    return _SPANDREL["module"]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscale model file: safetensors, or an opted-in pickle read with weights_only."""
    if path.suffix.lower() in SAFE_SUFFIXES:
        state = load_file(str(path))
    else:
        refuse_pickle(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    if DATAPARALLEL_SWINIR_KEY in state:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


class Upscaler(torch.nn.Module):
    """A spandrel single-image model, movable by the model manager (its network is a registered submodule).

    Calls go through spandrel's descriptor, which pads a tile to the architecture's size multiple (reflecting)
    and crops the output back, and clamps the output to 0..1, as in ComfyUI.
    """

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.net = descriptor.model
        self._descriptor = descriptor
        self.scale = int(descriptor.scale)
        self.architecture = descriptor.architecture.name
        self.input_channels = int(descriptor.input_channels)
        self.output_channels = int(descriptor.output_channels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._descriptor(pixels)


def load_upscaler(path: Path) -> Upscaler:
    """Reads an upscale model file into an Upscaler; refuses what is not a single-image model."""
    library = spandrel()
    state = read_state_dict(path)
    try:
        descriptor = library.ModelLoader().load_from_state_dict(state)
    except library.UnsupportedModelError as error:
        raise ValueError(f"{path.name}: spandrel does not recognise this model architecture") from error
    if not isinstance(descriptor, library.ImageModelDescriptor):
        raise ValueError(f"{path.name}: an upscale model must be a single-image model, not "
                         f"{type(descriptor).__name__} ({descriptor.architecture.name})")
    if descriptor.architecture.id in NEEDS_TORCHVISION and not _SPANDREL["torchvision"]:
        raise ValueError(f"{path.name}: the {descriptor.architecture.name} architecture needs torchvision, which "
                         "is not installed here")
    return Upscaler(descriptor.eval())


@dataclass(frozen=True)
class UpscaleModelHandle:
    """UPSCALE_MODEL: which file, and its scale; the weights live in the shared model manager."""

    path: Path
    identity: str
    scale: int
    env: Environment = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.identity}#upscale"

    def cache_bytes(self) -> int:
        return HANDLE_BYTES

    def loader(self) -> Callable[[], torch.nn.Module]:
        return lambda: load_upscaler(self.path)


def tiled_upscale(pixels: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], scale: int, out_channels: int,
                  tile: int = TILE, overlap: int = OVERLAP, step: Callable[[], None] | None = None) -> torch.Tensor:
    """Upscales channel-first images [B,C,H,W] in square tiles blended as ComfyUI blends them."""
    return tiled_scale(pixels, run, tile, tile, overlap, scale, out_channels, step)


def _on_device(model: Upscaler, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(piece: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(piece.to(device, dtype))

    return run


@dataclass
class _Progress:
    total: int
    report: Callable[[int, int], None] | None
    done: int = 0

    def advance(self) -> None:
        self.done += 1
        if self.report is not None:
            self.report(self.done, self.total)


def upscale_with_model(model: Upscaler, image: torch.Tensor, device: torch.device,
                       step: Callable[[int, int], None] | None = None, tile: int = TILE) -> torch.Tensor:
    """IMAGE [B,H,W,C] upscaled by the model, in tiles, halving the tile after running out of memory."""
    pixels = image[..., :model.input_channels].movedim(-1, 1)
    dtype = next(model.parameters()).dtype
    while True:
        progress = _Progress(pixels.shape[0] * tile_count(pixels.shape[2], pixels.shape[3], tile, tile, OVERLAP), step)
        try:
            result = tiled_upscale(pixels, _on_device(model, device, dtype), model.scale, model.output_channels,
                                   tile=tile, step=progress.advance)
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < MIN_TILE:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return result.movedim(1, -1).clamp(0, 1)


def list_upscale_models(env: Environment) -> list[str]:
    return env.folders.list("upscale_models")


class UpscaleModelLoader(Node):
    """Loads an upscale model (ESRGAN, SwinIR, ...) from models/upscale_models."""

    CATEGORY = "loaders"
    DISPLAY_NAME = "Load Upscale Model"
    RETURN_TYPES = ("UPSCALE_MODEL",)

    model_name: str = Input(choices=list_upscale_models)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """Without spandrel installed the workflow is refused before anything runs."""
        return [] if importlib.util.find_spec("spandrel") is not None else [("model_name", INSTALL_HINT)]

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        try:
            path = env.folders.find("upscale_models", inputs["model_name"])
        except FileNotFoundError:
            return None
        return hashlib.sha256(file_identity(path).encode()).hexdigest()

    def execute(self, ctx: RunContext) -> tuple:
        path = ctx.env.folders.find("upscale_models", self.model_name)
        identity = file_identity(path)
        provisional = UpscaleModelHandle(path, identity, 1, ctx.env)
        model = model_manager(ctx.env).get(provisional.key, provisional.loader())  # a broken file fails here
        return (UpscaleModelHandle(path, identity, model.scale, ctx.env),)


class ImageUpscaleWithModel(Node):
    """Upscales images with an upscale model, tile by tile (512 pixels, overlapping by 32)."""

    CATEGORY = "image/upscaling"
    DISPLAY_NAME = "Upscale Image (using Model)"
    RETURN_TYPES = ("IMAGE",)

    upscale_model: UpscaleModel
    image: Image

    def execute(self, ctx: RunContext) -> tuple:
        handle: UpscaleModelHandle = self.upscale_model
        manager = model_manager(ctx.env)
        with manager.use(handle.key, handle.loader()) as model:

            def step(done: int, total: int) -> None:
                ctx.check_interrupt()
                ctx.progress(done, total)

            return (upscale_with_model(model, self.image, manager.device, step),)
