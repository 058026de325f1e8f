"""Extra model folders from a YAML file in ComfyUI's extra_model_paths.yaml format.

Each top-level section (one per existing installation: a ComfyUI or A1111 tree) has an optional `base_path` and
one entry per model kind, a folder or several separated by newlines, relative to `base_path`:

    a111:
        base_path: ~/stable-diffusion-webui/
        checkpoints: models/Stable-diffusion
        vae: models/VAE
        loras: |
            models/Lora
            models/LyCORIS
        embeddings: embeddings

The file is read from the base directory (`extra_model_paths.yaml`) or from LATENTGRAPH_EXTRA_MODEL_PATHS.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from latentgraph.engine.folders import Folders

FILE_NAME = "extra_model_paths.yaml"
ENV_VAR = "LATENTGRAPH_EXTRA_MODEL_PATHS"
NOT_KINDS = ("base_path", "is_default")


def read_extra_model_paths(path: Path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs named by the file, in the file's order."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected sections of model folders, got {type(data).__name__}")
    pairs: list[tuple[str, Path]] = []
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = Path(os.path.expanduser(str(section.get("base_path", "")))) if section.get("base_path") else Path()
        if not base.is_absolute():
            base = path.parent / base
        for kind, folders in section.items():
            if kind in NOT_KINDS or folders is None:
                continue
            for line in str(folders).splitlines():
                if line.strip():
                    pairs.append((kind, (base / os.path.expanduser(line.strip())).resolve()))
    return pairs


def add_extra_model_paths(folders: Folders, base_dir: Path) -> list[tuple[str, Path]]:
    """Adds the folders of the YAML file found for this base directory (if any); returns what was added."""
    candidates = [Path(p) for p in [os.environ.get(ENV_VAR, "")] if p] + [Path(base_dir) / FILE_NAME]
    added: list[tuple[str, Path]] = []
    for candidate in candidates:
        if candidate.is_file():
            for kind, folder in read_extra_model_paths(candidate):
                folders.add(kind, folder)
                added.append((kind, folder))
    return added
