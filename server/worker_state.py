"""What one execution worker holds: the model files its model manager has loaded and its result cache's size.

The same report describes the in-process worker thread and each Ray worker (server/ray_workers.py), so `/workers`
answers alike in both modes, and the Ray dispatcher routes a prompt to the worker that already holds its models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.nodes.provenance import MODEL_INPUTS
from latentgraph.nodes.sd.models import ModelManager


def loaded_model_files(env: Environment) -> list[str]:
    """Paths of the model files (or diffusers folders) the environment's model manager holds, least recently used
    first; empty when no model was ever loaded. A model key is `<path>|<size>|<mtime>#<part>#<dtype>`."""
    manager = env.services.get(ModelManager)
    if manager is None:
        return []
    files: dict[str, None] = {}
    for key in manager.keys():
        files[key.split("|", 1)[0]] = None
    return list(files)


def held_state(executor: Executor) -> dict[str, Any]:
    """Models loaded and cache size of one worker's executor (JSON-safe)."""
    stats = executor.cache.stats()
    return {"models": loaded_model_files(executor.env), "cache_bytes": stats["bytes"],
            "cache_entries": stats["entries"], "cache_hits": stats["hits"], "cache_misses": stats["misses"]}


def model_references(prompt: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(folder kind, file name) of every model file an API-format prompt names through ComfyUI's loader input
    names (`ckpt_name`, `lora_name`, ...; see nodes/provenance.py)."""
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for name, value in inputs.items() if isinstance(inputs, Mapping) else ():
            if isinstance(value, str) and name in MODEL_INPUTS:
                yield MODEL_INPUTS[name], value


def model_files(env: Environment, prompt: Mapping[str, Any]) -> set[str]:
    """Resolved paths of the model files a prompt names (names that resolve to nothing are left out), in the
    form `loaded_model_files` reports them, so that the two can be compared."""
    found: set[str] = set()
    for kind, name in model_references(prompt):
        try:
            found.add(str(Path(env.folders.find(kind, name)).resolve()))
        except (FileNotFoundError, ValueError, KeyError):
            continue
    return found
