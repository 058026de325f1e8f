"""The node library: built-in nodes plus third-party ones from the `latentgraph.nodes` entry-point group."""

from __future__ import annotations

import importlib
import inspect
import logging
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from latentgraph.engine.context import Environment
from latentgraph.engine.library import expand_workflow_nodes
from latentgraph.engine.node import Node
from latentgraph.engine.registry import Registry

log = logging.getLogger(__name__)

BUILTIN_MODULES = [
    "latentgraph.nodes.image_nodes",
    "latentgraph.nodes.image_edit_nodes",
    "latentgraph.nodes.mask_nodes",
    "latentgraph.nodes.latent_op_nodes",
    "latentgraph.nodes.primitive_nodes",
    "latentgraph.nodes.utility_nodes",
    "latentgraph.nodes.animated_nodes",
    "latentgraph.nodes.workflow_nodes",
    "latentgraph.nodes.sd.loader_nodes",
    "latentgraph.nodes.sd.text_nodes",
    "latentgraph.nodes.sd.conditioning_nodes",
    "latentgraph.nodes.sd.sampler_nodes",
    "latentgraph.nodes.sd.custom_sampling_nodes",
    "latentgraph.nodes.sd.latent_nodes",
    "latentgraph.nodes.sd.vae_nodes",
    "latentgraph.nodes.sd.image_nodes",
    "latentgraph.nodes.sd.sdxl_nodes",
    "latentgraph.nodes.sd.sd3_nodes",
    "latentgraph.nodes.sd.upscale_nodes",
    "latentgraph.training.lora_nodes",
    "latentgraph.nodes.sd.vae_tiled_nodes",
    "latentgraph.nodes.sd.model_sampling_nodes",
    "latentgraph.nodes.sd.model_patch_nodes",
    "latentgraph.nodes.sd.controlnet_nodes",
    "latentgraph.nodes.preprocessor_nodes",
    "latentgraph.nodes.sd.compile_nodes",
]

ENTRY_POINT_GROUP = "latentgraph.nodes"


def _register_module(registry: Registry, module: ModuleType) -> None:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Node) and obj is not Node and obj.__module__ == module.__name__:
            registry.register(obj)


def _modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in BUILTIN_MODULES]


def load_registry(plugins: bool = True) -> Registry:
    """Every built-in node, then every plugin; a plugin that fails to load is reported, never fatal."""
    registry = Registry()
    registry.add_expander(expand_workflow_nodes)  # saved workflows used as nodes (`Workflow: NAME`)
    for module in _modules():
        _register_module(registry, module)
    if plugins:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
                if inspect.ismodule(loaded):
                    _register_module(registry, loaded)
                elif inspect.isclass(loaded) and issubclass(loaded, Node):
                    registry.register(loaded)
                else:
                    for cls in loaded():
                        registry.register(cls)
            except Exception:  # a broken plugin must not take the engine down
                message = traceback.format_exc(limit=3)
                registry.load_errors.append((ep.name, message))
                log.warning("node plugin %s failed to load and was skipped:\n%s", ep.name, message)
    return registry


def make_environment(base_dir: Path) -> Environment:
    """An environment whose folders include what the built-in node packages ship (their `setup(env)` hook)."""
    env = Environment(base_dir)
    for module in _modules():
        setup = getattr(module, "setup", None)
        if callable(setup):
            setup(env)
    return env
