"""A model manager: loaded weights shared by every node and run, kept under RAM and VRAM budgets.

Models are registered by a key that names their content (a file's identity plus the part of it) and a loader that
builds them on the CPU. `use(key, loader)` lends the model on the execution device for the duration of a block;
the same key is loaded once however many workflows use it. When a budget is exceeded the least recently used
models that are not in use are moved out: from VRAM to RAM, and from RAM out of memory entirely (to be loaded
again on next use). With no accelerator the execution device is the CPU and only the RAM budget applies. Other
large residents that must count in the same budget (a LoRA file's tensors) are kept with `get`: anything made of
tensors (a module, or a mapping of tensors) can be held. This is the SD runtime's, not the engine's: the engine
only sees an environment service with `free()` and `cache_bytes()`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from latentgraph.nodes.sd.devices import empty_cache, execution_device, total_memory

Loader = Callable[[], Any]
CPU = torch.device("cpu")


def module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.element_size() * t.nelement() for t in tensors)


def resident_bytes(value: Any) -> int:
    """Bytes held by a module, a tensor, or a mapping of tensors (what the manager can keep)."""
    if isinstance(value, torch.nn.Module):
        return module_bytes(value)
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, Mapping):
        return sum(resident_bytes(v) for v in value.values())
    raise TypeError(f"the model manager holds modules or tensors, not {type(value).__name__}")


def _budget_from_env(name: str, default: int) -> int:
    """A byte budget from an environment variable given in bytes or with a K/M/G suffix."""
    value = os.environ.get(name, "").strip().upper()
    if not value:
        return default
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(value[-1], 1)
    return int(float(value.rstrip("KMG")) * scale)


@dataclass
class _Entry:
    module: Any  # a torch.nn.Module, or tensors kept with get() only
    size: int
    on_device: bool
    pins: int = 0


class ModelManager:
    """Holds models by key; least recently used first out when a budget is exceeded."""

    def __init__(self, device: torch.device | None = None, ram_budget: int | None = None,
                 vram_budget: int | None = None) -> None:
        self.device = device or execution_device()
        self.ram_budget = ram_budget if ram_budget is not None else _budget_from_env(
            "LATENTGRAPH_RAM_BUDGET", total_memory(CPU) // 2)
        accelerated = self.device.type != "cpu"
        default_vram = max(total_memory(self.device) - 1024**3, 0) if self.device.type == "cuda" else self.ram_budget
        self.vram_budget = vram_budget if vram_budget is not None else _budget_from_env(
            "LATENTGRAPH_VRAM_BUDGET", default_vram if accelerated else 0)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.offloads = 0
        self.load_seconds = 0.0

    @property
    def separate_device(self) -> bool:
        return self.device.type != "cpu"

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Loaded keys, least recently used first."""
        return list(self._entries)

    def _load(self, key: str, loader: Loader) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            start = time.perf_counter()
            module = loader()
            self.load_seconds += time.perf_counter() - start
            self.loads += 1
            entry = _Entry(module, resident_bytes(module), on_device=not self.separate_device)
            self._entries[key] = entry
        self._entries.move_to_end(key)
        return entry

    def get(self, key: str, loader: Loader) -> Any:
        """The model (or other resident) in RAM, loading it if needed, without moving it to the execution device."""
        with self._lock:
            entry = self._load(key, loader)
            entry.pins += 1
            try:
                self._enforce()
            finally:
                entry.pins -= 1
            return entry.module

    @contextmanager
    def use(self, key: str, loader: Loader) -> Iterator[torch.nn.Module]:
        """Lends the model on the execution device; it cannot be moved out while the block runs."""
        with self._lock:
            entry = self._load(key, loader)
            entry.pins += 1
            try:
                if not entry.on_device:
                    entry.module.to(self.device)
                    entry.on_device = True
                self._enforce()
            except BaseException:
                entry.pins -= 1
                raise
        try:
            yield entry.module
        finally:
            with self._lock:
                entry.pins -= 1

    def _bytes(self, on_device: bool) -> int:
        return sum(e.size for e in self._entries.values() if e.on_device == on_device)

    def _enforce(self) -> None:
        """Moves least recently used, unpinned models out until both budgets hold (pinned ones may exceed them)."""
        if self.separate_device:
            for key in list(self._entries):
                if self._bytes(True) <= self.vram_budget:
                    break
                entry = self._entries[key]
                if entry.on_device and entry.pins == 0:
                    entry.module.to(CPU)
                    entry.on_device = False
                    self.offloads += 1
            empty_cache(self.device)
        ram = (lambda: self._bytes(False)) if self.separate_device else (lambda: self._bytes(True))
        for key in list(self._entries):
            if ram() <= self.ram_budget:
                break
            entry = self._entries[key]
            if entry.pins == 0 and (not self.separate_device or not entry.on_device):
                del self._entries[key]
                self.offloads += 1

    def unload(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.pins == 0:
                del self._entries[key]

    def free(self) -> None:
        """Drops every model that is not in use."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.pins == 0]:
                del self._entries[key]
            empty_cache(self.device)

    def cache_bytes(self) -> int:
        """Bytes held in RAM and VRAM together."""
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"device": str(self.device), "models": len(self._entries), "loads": self.loads,
                    "offloads": self.offloads, "ram_bytes": self._bytes(not self.separate_device),
                    "vram_bytes": self._bytes(True) if self.separate_device else 0,
                    "ram_budget": self.ram_budget, "vram_budget": self.vram_budget}
