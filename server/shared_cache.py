"""The shared cache tier of the Ray workers: results cheap to move, published by content key for every worker.

Each worker keeps its own in-memory `Cache` (engine/cache.py). Results made only of tensors and plain values
(conditioning, latents, images, masks; never a model handle) whose node shows nothing in the UI are also
published under a *portable* key to two shared tiers:

- Ray's object store, through one index actor (`SharedIndex`) that puts the objects itself and so owns them: a
  result survives the death of the worker that computed it (the price is one copy through the index actor, fine
  for latents and images); the index keeps a byte budget, oldest out first.
- A disk tier under the base directory (`cache/shared/`), which survives a restart of the server and the cluster;
  also under a byte budget, least recently used out first (a hit refreshes the file's time).

A worker's local miss asks the object store, then the disk. The portable key is the engine's key recomputed with
the SHA-256 of every model file a node names instead of its path, size and time (nodes/provenance.py remembers the
hashes), so a key means the same result on any machine that holds the same files. Other fingerprints (an input
image's content hash) are kept as they are. Files are read back with `torch.load(weights_only=True)`: a
damaged or planted file can hold nothing but tensors and plain values.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ray
import torch
from latentgraph.engine.cache import Cache, Entry, cache_key, estimate_bytes
from latentgraph.engine.executor import Executor
from latentgraph.nodes.provenance import MODEL_INPUTS, model_hashes

log = logging.getLogger(__name__)
SHARED_DIR = "cache/shared"
INDEX_NAME = "latentgraph-shared-index"
PLAIN = (int, float, bool, str, type(None))


def movable_bytes(value: Any, depth: int = 0) -> int | None:
    """Bytes of a result made only of tensors, plain values, lists, tuples and string-keyed dicts; None for
    anything else (a model handle, an object), which stays on its worker."""
    if depth > 32:
        return None
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, PLAIN):
        return 8
    if isinstance(value, list | tuple):
        total = 64
        for item in value:
            size = movable_bytes(item, depth + 1)
            if size is None:
                return None
            total += size
        return total
    if isinstance(value, dict):
        total = 64
        for name, item in value.items():
            size = movable_bytes(item, depth + 1)
            if not isinstance(name, str) or size is None:
                return None
            total += size
        return total
    return None


def to_cpu(value: Any) -> Any:
    """The same structure with every tensor on the CPU (a worker on another device can read it)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def portable_keys(executor: Executor, prompt: Any, outputs: list[str] | None) -> dict[str, str]:
    """Engine key -> portable key for every deterministic node of a valid prompt (empty for an invalid one).

    A node naming model files (`ckpt_name`, `lora_name`, ...) takes the files' SHA-256 as its fingerprint in place
    of the engine's path-size-time identity; every key folds in its parents' portable keys."""
    validation = executor.validate(prompt, outputs)
    if not validation.ok:
        return {}
    plan = executor.plan(validation)
    hashes = model_hashes(executor.env)
    portable: dict[str, str] = {}  # node id -> portable key
    mapping: dict[str, str] = {}
    for node_id in plan.order:
        record = plan.records[node_id]
        if node_id in plan.volatile or any(parent not in portable for parent, _, _ in record.parents.values()):
            continue
        fingerprint = record.fingerprint
        files = []
        for name, value in sorted(record.constants.items()):
            if name in MODEL_INPUTS and isinstance(value, str):
                try:
                    files.append(hashes.sha256(executor.env.folders.find(MODEL_INPUTS[name], value)))
                except (FileNotFoundError, ValueError, KeyError, IsADirectoryError, OSError):
                    files.append(f"unresolved:{fingerprint}")
        if files:
            fingerprint = "sha256:" + ",".join(files)
        key = cache_key(record.class_type, record.version, record.constants, fingerprint,
                        {name: (portable[parent], index) for name, (parent, _, index) in record.parents.items()})
        portable[node_id] = key
        mapping[record.key] = key
    return mapping


class DiskTier:
    """Results as files `<root>/<key[:2]>/<key>.pt` under a byte budget; the least recently used go first.

    Several worker processes share the folder: each writes under a temporary name and renames, and eviction
    rescans the folder, so an estimate off by another process's writes is corrected at the next eviction."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.root.glob("*/*.pt"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, key: str) -> tuple | None:
        path = self._path(key)
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # a hit makes it the most recently used
        except FileNotFoundError:
            return None
        except Exception as exc:  # damaged or foreign: dropped, and the node runs
            log.warning("the shared cache file %s cannot be read (%s); it is removed", path, exc)
            path.unlink(missing_ok=True)
            return None
        return tuple(value) if isinstance(value, list | tuple) else None

    def put(self, key: str, outputs: tuple, size: int) -> bool:
        if size > self.budget:
            return False
        path = self._path(key)
        if path.exists():
            os.utime(path)
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            torch.save(list(outputs), temporary)
            os.replace(temporary, path)
        except OSError as exc:  # a full disk costs the tier, never the run
            log.warning("the shared cache could not write %s: %s", path, exc)
            temporary.unlink(missing_ok=True)
            return False
        with self._lock:
            self._bytes += path.stat().st_size
            if self._bytes > self.budget:
                self._evict()
        return True

    def _evict(self) -> None:
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.budget * 0.9)
        for _, size, path in files:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._bytes = total

    @property
    def bytes(self) -> int:
        return self._bytes


class SharedIndex:
    """The Ray actor that owns the object-store tier: portable key -> object, oldest out past the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, tuple[ray.ObjectRef, int]] = OrderedDict()
        self._bytes = 0

    def lookup(self, key: str) -> list[ray.ObjectRef] | None:
        """A one-element list (so that Ray hands back the reference, not the value), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return [found[0]]

    def publish(self, key: str, outputs: list[Any], size: int) -> bool:
        """Puts `outputs` into the object store as this actor's own object (owned here, not by the publisher)."""
        if key in self._entries or size > self.budget:
            return key in self._entries
        self._entries[key] = (ray.put(outputs), size)
        self._bytes += size
        while self._bytes > self.budget:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old
        return True

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "budget": self.budget}


def shared_index(budget: int) -> Any:
    """The cluster's index actor (created by the first caller; detached from no job, it ends with the cluster)."""
    return ray.remote(SharedIndex).options(name=INDEX_NAME, get_if_exists=True, num_cpus=0,
                                           max_restarts=-1).remote(budget)


class TieredCache(Cache):
    """A worker's in-memory cache that falls back to the object store and the disk, and publishes to both.

    `bind` sets the engine-key -> portable-key map of the prompt about to run; keys it does not know (volatile
    nodes) are never shared."""

    def __init__(self, budget: int, disk: DiskTier | None, index: Any | None, max_entry_bytes: int) -> None:
        super().__init__(budget)
        self.disk = disk
        self.index = index
        self.max_entry_bytes = max_entry_bytes
        self._portable: dict[str, str] = {}
        self.shared = {"object_hits": 0, "disk_hits": 0, "published": 0}

    def bind(self, portable: dict[str, str]) -> None:
        self._portable = portable

    def keys_held(self) -> list[str]:
        """The engine keys in memory here (the dispatcher routes a prompt to the worker holding most of its)."""
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> Entry | None:
        entry = super().get(key)
        if entry is not None:
            return entry
        portable = self._portable.get(key)
        if portable is None:
            return None
        outputs = self._from_objects(portable)
        tier = "object_hits"
        if outputs is None and self.disk is not None:
            outputs, tier = self.disk.get(portable), "disk_hits"
            if outputs is not None:
                self._publish_objects(portable, outputs, estimate_bytes(outputs))  # warm the faster tier
        if outputs is None:
            return None
        self.shared[tier] += 1
        super().put(key, outputs, None)
        return super().peek(key) or Entry(outputs, None, estimate_bytes(outputs))

    def put(self, key: str, outputs: tuple, ui: dict[str, Any] | None) -> bool:
        kept = super().put(key, outputs, ui)
        portable = self._portable.get(key)
        size = movable_bytes(outputs) if portable is not None and ui is None else None
        if portable is not None and size is not None and size <= self.max_entry_bytes:
            moved = to_cpu(outputs)
            self._publish_objects(portable, moved, size)
            if self.disk is not None:
                self.disk.put(portable, moved, size)
            self.shared["published"] += 1
        return kept

    def _from_objects(self, portable: str) -> tuple | None:
        if self.index is None:
            return None
        try:
            refs = ray.get(self.index.lookup.remote(portable))
            return tuple(ray.get(refs[0])) if refs else None
        except Exception as exc:  # the owner restarted, the object was lost: the disk or the node answers
            log.info("the object-store tier could not serve %s: %r", portable[:16], exc)
            return None

    def _publish_objects(self, portable: str, outputs: tuple, size: int) -> None:
        if self.index is None:
            return
        try:
            self.index.publish.remote(portable, list(outputs), size)
        except Exception as exc:
            log.info("the object-store tier could not take %s: %r", portable[:16], exc)
