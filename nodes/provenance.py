"""What an output image needs to be reproduced elsewhere: the model files by hash, the software and the device.

SaveImage writes this record into a `latentgraph` PNG text chunk beside ComfyUI's `prompt` and `workflow`. Model
files are recognised by the input names ComfyUI's loaders use (`ckpt_name`, `lora_name`, ...) and by `embedding:`
references in prompt texts, so a workflow made of third-party loaders that follow ComfyUI's names is covered too.
A file's SHA-256 is computed once and remembered by path, size and modification time (in memory and in
`user/model_hashes.json` under the base directory), so a run never re-reads an unchanged checkpoint.

`compare` is the other half: given a record read back from a PNG and the environment of a new run, it names each
difference, and `find_by_hash` locates a model file that was renamed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.nodes.sd.devices import execution_device, weight_dtype

PNG_KEY = "latentgraph"
HASH_FILE = "user/model_hashes.json"
# ComfyUI's loader input names and the model folder each names a file in.
MODEL_INPUTS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "vae_name": "vae",
    "lora_name": "loras",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "control_net_name": "controlnet",
    "model_name": "upscale_models",
}
SEED_INPUTS = ("seed", "noise_seed")
EMBEDDING = re.compile(r"embedding:([^\s,()]+)")
_CHUNK = 1 << 20


class ModelHashes:
    """SHA-256 of model files, computed once per (path, size, mtime) and kept across restarts."""

    def __init__(self, store: Path) -> None:
        self._store = store
        self._lock = threading.Lock()
        try:
            self._known: dict[str, str] = json.loads(store.read_text())
        except (OSError, ValueError):
            self._known = {}

    @staticmethod
    def _identity(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def sha256(self, path: Path) -> str:
        identity = self._identity(path)
        with self._lock:
            known = self._known.get(identity)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        with self._lock:
            self._known[identity] = digest.hexdigest()
            self._save()
        return digest.hexdigest()

    def _save(self) -> None:
        try:
            self._store.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._store.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._known))
            temporary.replace(self._store)
        except OSError:  # a read-only base directory only costs re-hashing after a restart
            pass

    def cache_bytes(self) -> int:
        return 0


def model_hashes(env: Environment) -> ModelHashes:
    """The environment's model-hash memory."""
    return env.service(ModelHashes, lambda e: ModelHashes(e.base_dir / HASH_FILE))


def _model_references(prompt: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(folder kind, file name) of every model file a prompt names, in node order."""
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for name, value in inputs.items():
            if not isinstance(value, str):
                continue
            if name in MODEL_INPUTS:
                yield MODEL_INPUTS[name], value
            for embedding in EMBEDDING.findall(value):
                yield "embeddings", embedding


def _resolve(env: Environment, kind: str, name: str) -> Path | None:
    for candidate in (name, f"{name}.safetensors", f"{name}.pt"):
        try:
            return env.folders.find(kind, candidate)
        except (FileNotFoundError, ValueError, KeyError):
            continue
    return None


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def environment_record() -> dict[str, str]:
    """The software and device a run used, as strings that compare exactly."""
    device = execution_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "latentgraph": _package_version("latentgraph"),
        "torch": torch.__version__,
        "diffusers": _package_version("diffusers"),
        "device": f"{device.type}: {name}",
        "dtype": str(weight_dtype(device)).removeprefix("torch."),
    }


def record(env: Environment, prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The reproduction record of a prompt: model files by hash, environment, seeds."""
    models: dict[str, str] = {}
    for kind, name in _model_references(prompt):
        path = _resolve(env, kind, name)
        if path is not None:
            models[f"{kind}/{name}"] = model_hashes(env).sha256(path)
    seeds = {f"{node_id}.{key}": node["inputs"][key] for node_id, node in prompt.items()
             if isinstance(node, Mapping) for key in SEED_INPUTS
             if isinstance(node.get("inputs", {}).get(key), int)}
    return {"models": models, "environment": environment_record(), "seeds": seeds}


@dataclass(frozen=True)
class Difference:
    """One way a new run's setting differs from the record in an image."""

    what: str
    recorded: str
    now: str

    def __str__(self) -> str:
        return f"{self.what}: the image was made with {self.recorded}, this run has {self.now}"


def find_by_hash(env: Environment, kind: str, sha256: str) -> str | None:
    """The name of a file in the `kind` folders with this content, or None."""
    for name in env.folders.list(kind):
        path = _resolve(env, kind, name)
        if path is not None and model_hashes(env).sha256(path) == sha256:
            return name
    return None


def compare(env: Environment, recorded: Mapping[str, Any], prompt: Mapping[str, Any]) -> list[Difference]:
    """Each difference between a PNG's record and what running `prompt` here would use."""
    differences = []
    for key, sha in recorded.get("models", {}).items():
        kind, _, name = key.partition("/")
        path = _resolve(env, kind, name)
        if path is None:
            if find_by_hash(env, kind, sha) is None:  # a renamed file is relinked by `relink_renamed`
                differences.append(Difference(f"model {key}", f"sha256 {sha[:12]}", "no such file"))
            continue
        now = model_hashes(env).sha256(path)
        if now != sha:
            differences.append(Difference(f"model {key}", f"sha256 {sha[:12]}", f"sha256 {now[:12]}"))
    current = environment_record()
    for key, value in recorded.get("environment", {}).items():
        if current.get(key) != value:
            differences.append(Difference(key, str(value), str(current.get(key, "nothing"))))
    return differences


def read_record(path: Path) -> dict[str, Any] | None:
    """The reproduction record a PNG carries, or None (a ComfyUI-made PNG, or not a PNG)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(PNG_KEY)
    except (OSError, UnidentifiedImageError):
        return None
    try:
        loaded = json.loads(text) if text else None
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def relink_renamed(env: Environment, recorded: Mapping[str, Any], prompt: dict[str, Any]) -> list[str]:
    """Points inputs naming a missing model file at the file with the recorded hash; returns what it changed."""
    changes = []
    renamed: dict[tuple[str, str], str] = {}
    for key, sha in recorded.get("models", {}).items():
        kind, _, name = key.partition("/")
        if _resolve(env, kind, name) is None and (found := find_by_hash(env, kind, sha)) is not None:
            renamed[(kind, name)] = found
    for node_id, node in prompt.items():
        for input_name, value in node.get("inputs", {}).items():
            kind = MODEL_INPUTS.get(input_name)
            if kind is not None and (kind, value) in renamed:
                node["inputs"][input_name] = renamed[(kind, value)]
                changes.append(f"{node_id}.{input_name}: {value} -> {renamed[(kind, value)]} (same sha256)")
    return changes
