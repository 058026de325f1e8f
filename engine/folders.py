"""The base directory's layout, as ComfyUI has it, so an existing model collection is used in place.

`models/<kind>` holds model files; extra folders per kind can be added (from a config file, or by a node package
that ships files). Names are relative to their folder, with forward slashes, as the editor shows them.
"""

from __future__ import annotations

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


class Folders:
    """Finds and lists files under the base directory and any extra folders."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).resolve()
        self._extra: dict[str, list[Path]] = {}

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
            if folder.is_dir():
                names.update(
                    p.relative_to(folder).as_posix()
                    for p in folder.rglob("*")
                    if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
                )
        return sorted(names)

    def find(self, kind: str, name: str) -> Path:
        """The file `name` of this kind; names that would leave their folder are not found."""
        for folder in self.folders(kind):
            candidate = (folder / name).resolve()
            if candidate.is_relative_to(folder.resolve()) and candidate.is_file():
                return candidate
        searched = ", ".join(str(f) for f in self.folders(kind))
        raise FileNotFoundError(f"{kind} file {name!r} not found (searched: {searched})")
