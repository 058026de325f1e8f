"""The base directory's layout, as ComfyUI has it, so an existing model collection is used in place.

`models/<kind>` holds model files; extra folders per kind can be added (from a config file, or by a node package
that ships files). Names are relative to their folder, with forward slashes, as the editor shows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
MODEL_KINDS = (
    "checkpoints",
    "loras",
    "vae",
    "embeddings",
    "upscale_models",
    "controlnet",
    "clip",
    "text_encoders",
    "unet",
    "diffusion_models",
)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@dataclass
class _Listing:
    """A folder's model files, valid while none of the directories it was read from has changed."""

    names: list[str]
    directories: dict[str, int | None]

    def is_current(self) -> bool:
        return all(_mtime(d) == stamp for d, stamp in self.directories.items())


def _scan(folder: Path) -> _Listing:
    names, directories = [], {}
    for root, _, files in os.walk(folder, followlinks=True):
        directories[root] = _mtime(root)
        prefix = Path(root).relative_to(folder)
        names += [(prefix / f).as_posix() for f in files if os.path.splitext(f)[1].lower() in MODEL_EXTENSIONS]
    return _Listing(names, directories)


class Folders:
    """Finds and lists files under the base directory and any extra folders.

    Listings are kept until a directory in them changes: validation lists model folders on every prompt, and a
    collection of thousands of models must not make an identical re-queue slow.
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).resolve()
        self._extra: dict[str, list[Path]] = {}
        self._listings: dict[Path, _Listing] = {}

    def _dir(self, name: str) -> Path:
        path = self.base_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def input_dir(self) -> Path:
        return self._dir("input")

    @property
    def output_dir(self) -> Path:
        return self._dir("output")

    @property
    def temp_dir(self) -> Path:
        return self._dir("temp")

    @property
    def user_dir(self) -> Path:
        return self._dir("user")

    @property
    def models_dir(self) -> Path:
        return self._dir("models")

    def kinds(self) -> list[str]:
        return sorted(set(MODEL_KINDS) | set(self._extra))

    def add(self, kind: str, path: Path) -> None:
        """Adds an extra folder searched after models/<kind> (and after folders added before it)."""
        path = Path(path).resolve()
        folders = self._extra.setdefault(kind, [])
        if path not in folders:
            folders.append(path)

    def folders(self, kind: str) -> list[Path]:
        return [self.base_dir / "models" / kind, *self._extra.get(kind, [])]

    def list(self, kind: str) -> list[str]:
        names: set[str] = set()
        for folder in self.folders(kind):
            if not folder.is_dir():
                continue
            listing = self._listings.get(folder)
            if listing is None or not listing.is_current():
                listing = self._listings[folder] = _scan(folder)
            names.update(listing.names)
        return sorted(names)

    def find(self, kind: str, name: str) -> Path:
        """The file `name` of this kind. A name that leaves its folder as written ('..', an absolute path) is not
        found, but a symlink inside the folder is followed wherever it points: shared model collections are often
        links into another disk, and `list` shows them (uploads and /view stay strict; they do not come here)."""
        for folder in self.folders(kind):
            root = Path(os.path.normpath(folder))
            candidate = Path(os.path.normpath(root / name))
            if candidate.is_relative_to(root) and candidate != root and candidate.is_file():
                return candidate.resolve()
        searched = ", ".join(str(f) for f in self.folders(kind))
        raise FileNotFoundError(f"{kind} file {name!r} not found (searched: {searched})")
