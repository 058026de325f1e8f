"""What the executor knows about each node beyond its result: why it ran, what it cost, what a run will take.

The cache key of a node already says *whether* it must run; comparing the key's ingredients with those of the
node id's previous run says *why*: a constant input changed (old -> new), a parent re-ran or now gives another
result, the node's file changed on disk (its fingerprint), or the key is unchanged and the result was evicted by
the cache under its byte budget or freed. Costs are measured around `execute` (wall time, peak memory through a
probe the runtime may supply, bytes the cache holds), and timings recorded per class, input shapes and device
feed an estimate of a run before it starts.

Nothing here imports torch: tensors are read by duck typing (`.shape`), and memory is measured by a probe object
(`env.services["memory_probe"]`) that a runtime with accelerators provides; the default reads the process's peak
resident memory on Linux, which costs a few microseconds per node.
"""

from __future__ import annotations

import os
import resource
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_VALUE_CHARS = 120
SIZE_NAMES = ("width", "height")  # constants that say how many pixels a node works on, propagated downstream
BATCH_NAME = "batch_size"
STEPS_NAME = "steps"


# -- memory probes -------------------------------------------------------------------------------------------------

class MemoryProbe(Protocol):
    """Measures the peak memory of one node's execution; `device` names where the work runs (for timing records)."""

    device: str

    def start(self) -> None:
        """Called just before a node executes."""

    def peak_bytes(self) -> int | None:
        """Peak memory above the level at `start`, or None when it cannot be measured. Called as the node
        returns and before its wall time is read, so a probe for an asynchronous device can wait for its work."""


class RssPeakProbe:
    """Peak resident memory of the process, reset per node through Linux's /proc/self/clear_refs (mode 5).

    After the reset the kernel's high-water mark equals the current resident size, so `getrusage` right after it
    gives the baseline and after the node gives the peak: two system calls and a write, a few microseconds.
    Threads share the process's memory, so work running beside the node counts too; where the reset is not
    available (not Linux, no permission) the probe reports None rather than a process-lifetime figure.
    """

    device = "cpu"

    def __init__(self) -> None:
        self._baseline = 0
        try:
            self._fd: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._fd = None

    def start(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"5")
        except OSError:
            self._fd = None
            return
        self._baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_bytes(self) -> int | None:
        if self._fd is None:
            return None
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._baseline) * 1024


# -- what a node was computed from ---------------------------------------------------------------------------------

@dataclass(slots=True)
class NodeRecord:
    """The ingredients of the cache key of a node id's last result: compared with the next run's to say why."""

    class_type: str
    key: str
    version: int
    constants: dict[str, Any]
    fingerprint: str | None
    parents: dict[str, tuple[str, str, int]]  # input name -> (parent node id, parent key, output index)
    volatile: bool = False
    kept: bool = True  # False: the cache refused the result (larger than its budget)
    generation: int = 0  # the executor's cache generation when stored; a later `free` makes it older
    shapes: str | None = None  # input shapes measured the last time it executed
    pixels: int | None = None
    volatile_from: tuple[str, ...] = ()  # the non-deterministic ancestors that make a node volatile


def summarize_value(value: Any) -> Any:
    """A short JSON-safe form of a constant for a reason: long strings cut, other objects by type."""
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _short(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def explain(current: NodeRecord, previous: NodeRecord | None, *, ran: set[str], budget: int,
            generation: int) -> dict[str, Any]:
    """Why a node that must run was not found in the cache, as `{kind, text, ...}`.

    kinds: `new` (no earlier run of this node id as this class), `changed` (`changes` lists constants old -> new,
    parents that re-ran or give another result, links made or removed, a changed file or node version),
    `evicted` (same key, dropped by the cache under `budget`), `too_large` (same key, larger than the budget),
    `freed` (same key, the cache was cleared since) and `volatile` (never cached: a non-deterministic node or
    one downstream of it, listed in `nodes`).
    """
    changes: list[dict[str, Any]] = []
    if previous is not None and previous.class_type == current.class_type:
        changes = _changes(current, previous, ran)
    if current.volatile:
        volatile_roots = list(current.volatile_from)
        text = ("not deterministic, so never cached" if not volatile_roots
                else "downstream of non-deterministic node " + ", ".join(volatile_roots) + ", so never cached")
        reason: dict[str, Any] = {"kind": "volatile", "text": text, "nodes": volatile_roots}
        if changes:
            reason["changes"] = changes
        return reason
    if previous is None or previous.class_type != current.class_type:
        return {"kind": "new", "text": "first run of this node"}
    if previous.key == current.key:
        if not previous.kept:
            return {"kind": "too_large", "budget": budget,
                    "text": f"its result is larger than the cache budget ({format_bytes(budget)}), so it is not kept"}
        if previous.generation != generation:
            return {"kind": "freed", "text": "the cache was cleared (free) since its last run"}
        return {"kind": "evicted", "budget": budget,
                "text": f"evicted by the cache (budget {format_bytes(budget)})"}
    if not changes:  # the key differs for a reason not kept in the record (e.g. a node class's new version)
        return {"kind": "changed", "changes": [], "text": "its inputs changed"}
    return {"kind": "changed", "changes": changes, "text": "; ".join(c["text"] for c in changes)}


def _changes(current: NodeRecord, previous: NodeRecord, ran: set[str]) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    old_constants, new_constants = previous.constants, current.constants
    if old_constants != new_constants:  # one C-level comparison in the common case of equal constants
        names = sorted(new_constants) if old_constants.keys() == new_constants.keys() \
            else sorted(old_constants.keys() | new_constants.keys())
        for name in names:
            old, new = old_constants.get(name), new_constants.get(name)
            if old != new:
                old_s, new_s = summarize_value(old), summarize_value(new)
                changes.append({"type": "constant", "input": name, "old": old_s, "new": new_s,
                                "text": f"{name} changed {_short(old_s)} -> {_short(new_s)}"})
    old_parents, new_parents = previous.parents, current.parents
    if old_parents == new_parents:
        names = []
    elif old_parents.keys() == new_parents.keys():
        names = sorted(new_parents)
    else:
        names = sorted(old_parents.keys() | new_parents.keys())
    for name in names:
        old_link, new_link = old_parents.get(name), new_parents.get(name)
        if old_link == new_link:
            continue
        if new_link is None:
            changes.append({"type": "unlinked", "input": name, "text": f"{name} is no longer linked"})
        elif old_link is None or old_link[0] != new_link[0] or old_link[2] != new_link[2]:
            changes.append({"type": "linked", "input": name, "node": new_link[0],
                            "text": f"{name} now comes from node {new_link[0]}"})
        elif new_link[0] in ran:
            changes.append({"type": "parent_ran", "input": name, "node": new_link[0],
                            "text": f"parent {new_link[0]} re-ran ({name})"})
        else:
            changes.append({"type": "parent_changed", "input": name, "node": new_link[0],
                            "text": f"parent {new_link[0]} gives another cached result ({name})"})
    if previous.fingerprint != current.fingerprint:
        changes.append({"type": "fingerprint", "text": "its file changed on disk"})
    if previous.version != current.version:
        changes.append({"type": "version", "old": previous.version, "new": current.version,
                        "text": f"node version {previous.version} -> {current.version}"})
    return changes


# -- what a node works on ------------------------------------------------------------------------------------------

def input_shapes(values: dict[str, Any]) -> str:
    """A canonical string of the shapes of the tensors among a node's linked inputs (nested in dicts and lists),
    e.g. `latent.samples=1x4x8x8;positive.0.0=1x77x32`; objects without a shape are left out."""
    found: list[str] = []
    for name in sorted(values):
        _collect_shapes(values[name], name, found, 0)
    return ";".join(found)


def _collect_shapes(value: Any, path: str, found: list[str], depth: int) -> None:
    if depth > 4 or len(found) >= 16:
        return
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            found.append(path + "=" + "x".join(map(str, shape)))
        except TypeError:  # a class whose `shape` is a descriptor, not a tuple
            pass
        return
    if isinstance(value, dict):
        for key in sorted(value, key=str)[:8]:
            _collect_shapes(value[key], f"{path}.{key}", found, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value[:4]):
            _collect_shapes(item, f"{path}.{index}", found, depth + 1)


def own_pixels(constants: dict[str, Any]) -> int | None:
    """width x height x batch_size when the node has those constants (an empty latent, a resize), else None."""
    width, height = constants.get(SIZE_NAMES[0]), constants.get(SIZE_NAMES[1])
    if not (isinstance(width, int) and isinstance(height, int)) or isinstance(width, bool):
        return None
    batch = constants.get(BATCH_NAME)
    return width * height * (batch if isinstance(batch, int) and batch > 0 else 1)


def steps_of(constants: dict[str, Any]) -> int | None:
    steps = constants.get(STEPS_NAME)
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


# -- estimates -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timing:
    """One recorded execution: what it worked on and how long it took."""

    shapes: str
    steps: int | None
    pixels: int | None
    wall_ms: float


@dataclass
class NodeEstimate:
    node: str
    class_type: str
    expected_ms: float | None
    basis: str  # "exact" | "same size" | "scaled" | "unknown"
    samples: int = 0
    reason: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "class_type": self.class_type,
                "expected_ms": None if self.expected_ms is None else round(self.expected_ms, 1),
                "basis": self.basis, "samples": self.samples, "reason": self.reason}


def _typical(values: list[float]) -> tuple[float, int]:
    """The newest value, or the median of the newest three once there are three: a first run that also loaded
    the model is outvoted as soon as steady runs follow it, and one noisy run does not swing the estimate."""
    recent = values[:3]
    return (statistics.median(recent), 3) if len(recent) == 3 else (recent[0], 1)


def _scale(row: Timing, steps: int | None, pixels: int | None) -> float | None:
    """`row`'s time scaled linearly to `steps` and `pixels`; None where a side lacks a feature the other has."""
    factor = 1.0
    if steps != row.steps:
        if steps is None or row.steps is None:
            return None
        factor *= steps / row.steps
    if pixels != row.pixels:
        if pixels is None or row.pixels is None:
            return None
        factor *= pixels / row.pixels
    return row.wall_ms * factor


def expected_time(history: Iterable[Timing], shapes: str | None, steps: int | None,
                  pixels: int | None) -> tuple[float | None, str, int]:
    """(milliseconds, basis, samples) from recorded timings of the same class on the same device, newest first.

    In order: an exact match (same input shapes, steps and pixels); timings of the same input shapes scaled by
    steps ("scaled": the node's work is known, only its length changed); timings with the same steps and pixels
    ("same size"); any timing scaled linearly by steps and pixels where both sides know them ("scaled"). No
    usable timing gives (None, "unknown", 0): a guess from another class would be dishonest. `shapes` is None
    when the node's input shapes are not known in advance (its inputs changed size, or it never ran here).
    """
    rows = list(history)
    if not rows:
        return None, "unknown", 0
    if shapes is not None:
        same_shapes = [r for r in rows if r.shapes == shapes]
        exact = [r.wall_ms for r in same_shapes if r.steps == steps and r.pixels == pixels]
        if exact:
            value, samples = _typical(exact)
            return value, "exact", samples
        scaled_same = [v for v in (_scale(r, steps, pixels) for r in same_shapes) if v is not None]
        if scaled_same:
            value, samples = _typical(scaled_same)
            return value, "scaled", samples
    same_size = [r.wall_ms for r in rows if r.steps == steps and r.pixels == pixels]
    if same_size:
        value, samples = _typical(same_size)
        return value, "same size", samples
    scaled = [v for v in (_scale(r, steps, pixels) for r in rows) if v is not None]
    if scaled:
        value, samples = _typical(scaled)
        return value, "scaled", samples
    return None, "unknown", 0
