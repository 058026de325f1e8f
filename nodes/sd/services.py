"""The SD runtime's shared state, as services of the environment reached through typed accessors.

Nothing here is module-level: each environment (a server, a test, a CLI run) has its own model manager and
checkpoint facts, `/free` (Environment.free) clears them, and what they hold is counted: the model manager's
budget covers model weights and LoRA tensors alike (nodes/sd/lora.py keeps those in it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from latentgraph.engine.context import Environment
from latentgraph.nodes.sd.models import ModelManager

if TYPE_CHECKING:
    from latentgraph.nodes.sd.checkpoint import CheckpointInfo

INFO_CACHE_SIZE = 16


def model_manager(env: Environment) -> ModelManager:
    """The environment's shared model manager (weights and LoRA tensors under one RAM/VRAM budget)."""
    return env.service(ModelManager, lambda _env: ModelManager())


class CheckpointInfos:
    """Header facts of checkpoints, read once per file content; a few recent files are remembered.

    An opted-in pickled file has no header to read lazily: its whole state dict is loaded, so it is not kept.
    """

    def __init__(self, size: int = INFO_CACHE_SIZE) -> None:
        self._size = size
        self._infos: OrderedDict[str, CheckpointInfo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, identity: str, inspect: Callable[[Path], CheckpointInfo | None]) -> CheckpointInfo:
        """The facts of the file `identity` names, read with `inspect` (its family's) the first time."""
        with self._lock:
            info = self._infos.get(identity)
        if info is not None:
            return info
        info = inspect(Path(path))
        if info is None:
            raise ValueError(f"{Path(path).name} is no longer a checkpoint of the family that first read it")
        tensors = info.extra.get("tensors")
        if tensors is None or tensors.lazy:
            with self._lock:
                while len(self._infos) >= self._size:
                    self._infos.popitem(last=False)
                self._infos[identity] = info
        return info

    def __len__(self) -> int:
        return len(self._infos)

    def free(self) -> None:
        with self._lock:
            self._infos.clear()

    def cache_bytes(self) -> int:
        """Headers only (names, shapes, configs): small next to any weights, counted as nothing."""
        return 0
