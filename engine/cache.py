"""Results named by what they were computed from, kept across runs under a byte budget.

A key is a hash of a node's class, version, constant inputs, fingerprint and the keys of the nodes feeding it, so
the same sub-graph in another workflow, under other node ids, finds the same entry: going back to an earlier
workflow is a cache hit rather than a recomputation.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


def cache_key(class_type: str, version: int, constants: dict[str, Any], fingerprint: str | None,
              parents: dict[str, tuple[str, int]]) -> str:
    """The content address of a node's result; `parents` maps input names to (parent key, output index)."""
    payload = json.dumps(
        [class_type, version, constants, fingerprint, sorted(parents.items())],
        sort_keys=True, default=repr, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def estimate_bytes(value: Any, _seen: set[int] | None = None) -> int:
    """Memory held by a result: tensors, arrays and images by their buffers; objects may report `cache_bytes()`.

    Duck-typed, so that the engine does not import torch, numpy or PIL for a check.
    """
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor
        return value.element_size() * value.nelement()
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):  # a numpy array
        return int(value.nbytes)
    if hasattr(value, "getbands") and hasattr(value, "width"):  # a PIL image
        return value.width * value.height * len(value.getbands())
    if hasattr(value, "cache_bytes"):
        return int(value.cache_bytes())
    if isinstance(value, dict):
        return 64 + sum(estimate_bytes(v, seen) for v in value.values())
    if isinstance(value, list | tuple | set):
        return 64 + sum(estimate_bytes(v, seen) for v in value)
    if isinstance(value, str | bytes):
        return len(value)
    return 64


@dataclass
class Entry:
    outputs: tuple
    ui: dict[str, Any] | None
    size: int


class Cache:
    """An LRU map from cache key to a node's outputs and UI result, never holding more than `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def peek(self, key: str) -> Entry | None:
        """The entry under `key` without counting a hit or a miss or refreshing its age (for estimates)."""
        with self._lock:
            return self._entries.get(key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, outputs: tuple, ui: dict[str, Any] | None) -> bool:
        """Stores a result, evicting the least recently used; a result larger than the budget is not kept."""
        size = estimate_bytes(outputs) + estimate_bytes(ui)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key).size
            if size > self.budget:
                return False
            while self._bytes + size > self.budget:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.size
            self._entries[key] = Entry(outputs, ui, size)
            self._bytes += size
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "bytes": self._bytes, "budget": self.budget, "hits": self.hits,
                "misses": self.misses}
