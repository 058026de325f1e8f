"""The family registry: every model family the runtime knows, built-in or registered by a package.

Built-in families are the modules below (one per family); a third-party package adds one through the entry-point
group `latentgraph.families`, whose object is a `Family` instance, a class to instantiate, or a module with a
`FAMILY` attribute. The stock nodes then load and sample its checkpoints with no change here:
CheckpointLoaderSimple asks `inspect_checkpoint` and the family's `handles`, KSampler the MODEL handle's family
for its noise space and denoiser call. Families are tried by `priority` (lowest first) when a file is inspected.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
import traceback
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile
from latentgraph.nodes.sd.detect import Detected, Shapes, UnknownCheckpoint, detect, text_layout
from latentgraph.nodes.sd.family import BaseFamily, Family

if TYPE_CHECKING:
    from latentgraph.engine.context import Environment

__all__ = ["ENTRY_POINT_GROUP", "BaseFamily", "Family", "checkpoint_handles", "detect_ldm", "diffusion_model",
           "families", "family", "inspect_checkpoint", "load_component", "register", "reload", "unknown_file"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "latentgraph.families"
BUILTIN_MODULES = ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3")

_lock = threading.RLock()
_registry: dict[str, Family] | None = None
load_errors: list[tuple[str, str]] = []


def register(new: Family, registry: dict[str, Family] | None = None) -> Family:
    """Adds a family (replacing none: two families with one name is an error)."""
    target = _families() if registry is None else registry
    if not isinstance(new, Family):
        raise TypeError(f"{new!r} does not implement the Family protocol")
    if new.name in target and target[new.name] is not new:
        raise ValueError(f"a model family named {new.name!r} is already registered")
    target[new.name] = new
    return new


def _as_family(loaded: Any) -> Family:
    if inspect.ismodule(loaded):
        loaded = loaded.FAMILY
    if inspect.isclass(loaded):
        loaded = loaded()
    return loaded


def _load() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for name in BUILTIN_MODULES:
        register(importlib.import_module(f"{__name__}.{name}").FAMILY, found)
    load_errors.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(_as_family(ep.load()), found)
        except Exception:  # a broken plugin must not take the runtime down
            message = traceback.format_exc(limit=3)
            load_errors.append((ep.name, message))
            log.warning("model family plugin %s failed to load and was skipped:\n%s", ep.name, message)
    return found


def _families() -> dict[str, Family]:
    global _registry
    with _lock:
        if _registry is None:
            _registry = _load()
        return _registry


def reload() -> None:
    """Reads the built-in modules and the entry points again (after installing a family package)."""
    global _registry
    with _lock:
        _registry = None


def family(name: str) -> Family:
    """The registered family named `name` (CheckpointInfo.family)."""
    try:
        return _families()[name]
    except KeyError:
        raise UnknownCheckpoint(f"no model family named {name!r} is installed; known: "
                                f"{', '.join(_families())}") from None


def families() -> list[Family]:
    """Every family, in the order files are inspected (priority, then registration)."""
    listed = list(_families().values())
    return sorted(listed, key=lambda f: f.priority)


def describe_keys(shapes: Shapes) -> str:
    """What a state dict holds, by top-level key prefix, for error messages."""
    counts = Counter(".".join(k.split(".")[:2]) if k.split(".")[0] in ("model", "conditioner", "text_encoders")
                     else k.split(".")[0] for k in shapes)
    return ", ".join(f"{prefix} ({n} tensors)" for prefix, n in counts.most_common(8)) or "no tensors"


def unknown_file(path: Path, shapes: Shapes, reason: str) -> UnknownCheckpoint:
    labels = ", ".join(f.label for f in _families().values())
    return UnknownCheckpoint(f"{Path(path).name} is not a checkpoint of a known family ({labels}): {reason}. "
                             f"It holds: {describe_keys(shapes)}")


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Reads what a checkpoint (single file or diffusers folder) is without loading its weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    tensors = TensorFile(path) if path.is_file() else None  # the header, read once for every family
    for candidate in families():
        info = candidate.inspect(path, tensors)
        if info is not None:
            return info
    raise unknown_file(path, tensors.shapes if tensors is not None else {}, "no installed family recognised it")


def detect_ldm(shapes: Shapes, metadata: dict[str, str] | None = None, read: Any = None) -> Detected:
    """Configs of an LDM-layout (SD1.x-like) file from its shapes, read by the family whose text encoder layout it
    has (SD1.x: OpenAI CLIP, SD2.x: OpenCLIP, or an installed family declaring another `text_layout`)."""
    layout = text_layout(shapes)
    reader = next((f for f in families() if getattr(f, "text_layout", None) == layout), None)
    if reader is None:
        raise UnknownCheckpoint(f"no installed family reads LDM files with a {layout} text encoder")
    return detect(shapes, metadata, read, family=reader)


def load_component(info: CheckpointInfo, component: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """One component of a checkpoint, on the CPU, in eval mode, loaded by its family."""
    return family(info.family).load_component(info, component, dtype)


def checkpoint_handles(info: CheckpointInfo, env: Environment, require_vae: bool = True) -> tuple[Any, Any, Any]:
    """MODEL, CLIP and VAE handles for a checkpoint, given by its family."""
    return family(info.family).handles(info, env, require_vae)


def diffusion_model(path: Path, env: Environment) -> Any:
    """A MODEL handle for a file holding a denoiser alone (UNETLoader), from the first family that reads it."""
    for candidate in families():
        model = candidate.diffusion_model(Path(path), env)
        if model is not None:
            return model
    labels = ", ".join(f.label for f in _families().values())
    raise UnknownCheckpoint(f"{Path(path).name} is not a diffusion model file of a known family ({labels})")
