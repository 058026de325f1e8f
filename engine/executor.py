"""Runs the part of a workflow that its outputs need, reusing every result the cache already holds.

The order of work: validate; compute each node's content key from its inputs and its parents' keys; walk back from
the outputs to find which nodes must really execute (a cached node's ancestors need not run); execute those in a
deterministic topological order, releasing each intermediate as soon as its last consumer has run.

Along the way it keeps, per node id, what the last result was computed from (`insight.NodeRecord`), so that a
node that must run can say why (`RunResult.nodes[id]["reason"]`), and what it cost (wall time, peak memory, bytes
in the cache); `estimate` answers which nodes a workflow would run and how long that would take, running nothing.
The same reports go out as `latentgraph.node_reason` events, which ComfyUI clients ignore.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from latentgraph.engine.cache import Cache, cache_key
from latentgraph.engine.context import Environment, RunContext, Sink
from latentgraph.engine.insight import (
    MemoryProbe,
    NodeEstimate,
    NodeRecord,
    RssPeakProbe,
    Timing,
    expected_time,
    explain,
    input_shapes,
    own_pixels,
    steps_of,
)
from latentgraph.engine.interrupt import Interrupted, InterruptToken
from latentgraph.engine.node import NodeOutput
from latentgraph.engine.registry import Registry
from latentgraph.engine.validate import InvalidPrompt, Validation, validate

log = logging.getLogger(__name__)
DEFAULT_CACHE_BYTES = 4 * 1024**3
MAX_RECORDS = 100_000  # node ids remembered for reasons; the oldest are forgotten first
REASON_EVENT = "latentgraph.node_reason"
MEMORY_PROBE_SERVICE = "memory_probe"
PROBE_ABOVE_MS = 1.0  # memory is probed for classes whose last execution took longer: the probe costs ~10-50 us
TimingHistory = Callable[[str, str], list[Timing]]  # (class_type, device) -> recorded timings, newest first


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunResult:
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    messages: list[list[Any]] = field(default_factory=list)
    device: str = "cpu"
    _nodes: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _reasons: Callable[[], dict[str, dict[str, Any]]] | None = field(default=None, repr=False)

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Per node of the run: status (cached, ran, failed, interrupted, not_run), the reason a node ran, its
        key and costs. Reasons are worked out on first access, so a run nobody asks about pays nothing for them."""
        if self._reasons is not None:
            reasons, self._reasons = self._reasons(), None
            for node_id, reason in reasons.items():
                if node_id in self._nodes:
                    self._nodes[node_id] = {**self._nodes[node_id], "reason": reason}
        return self._nodes


@dataclass
class Plan:
    """What a run of a validated workflow will do: which nodes come from the cache, which run, and why."""

    order: list[str]
    graph: nx.DiGraph
    keys: dict[str, str]
    volatile: set[str]
    records: dict[str, NodeRecord]
    to_run: set[str]
    cached: list[str]
    previous: dict[str, NodeRecord | None]  # what each node to run was last computed from
    budget: int
    generation: int
    entries: dict[str, Any] = field(default_factory=dict)  # cached node id -> cache Entry (runs only)

    def reasons(self) -> dict[str, dict[str, Any]]:
        """Why each node to run is not served from the cache (see `insight.explain`)."""
        return {node_id: explain(self.records[node_id], previous, ran=self.to_run, budget=self.budget,
                                 generation=self.generation) for node_id, previous in self.previous.items()}


def _summarize(value: Any) -> Any:
    """A short, JSON-safe description of an input for error reports (tensors by shape, not by content)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={getattr(value, 'dtype', '?')})"
    if isinstance(value, int | float | bool | str) or value is None:
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."
    if isinstance(value, dict):
        return {str(k): _summarize(v) for k, v in list(value.items())[:10]}
    return type(value).__name__


class Executor:
    """Validates and runs workflows against one registry and environment, with a cache shared by all runs."""

    def __init__(self, registry: Registry, env: Environment, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.registry = registry
        self.env = env
        self.cache = Cache(cache_bytes)
        self.records: dict[str, NodeRecord] = {}  # node id -> what its last result was computed from
        self.generation = 0  # bumped when the cache is cleared, so a reason can tell "freed" from "evicted"
        self._default_probe = RssPeakProbe()
        self._class_ms: dict[str, float] = {}  # last wall time per class: cheap classes skip the memory probe
        # called with (result, prompt_id) as each run ends, before it returns: the server records timings here
        self.listeners: list[Callable[[RunResult, str], None]] = []

    @property
    def probe(self) -> MemoryProbe:
        """The runtime's memory probe (`env.services["memory_probe"]`), else peak resident memory."""
        return self.env.services.get(MEMORY_PROBE_SERVICE) or self._default_probe

    def validate(self, prompt: Any, outputs: list[str] | None = None) -> Validation:
        return validate(prompt, self.registry, self.env, outputs)

    def free(self, cache: bool = True, models: bool = True) -> None:
        if cache:
            self.cache.clear()
            self.generation += 1
        if models:
            self.env.free()

    def _keys(self, validation: Validation, order: list[str],
              graph: nx.DiGraph) -> tuple[dict[str, str], set[str], dict[str, NodeRecord]]:
        """Content keys per node; nodes downstream of a non-deterministic one get fresh keys and are not cached.

        Each key's ingredients are kept as a record, so that the next run of the node id can say what changed.
        """
        prompt = validation.prompt
        assert prompt is not None, "only a valid workflow is planned or run"
        keys: dict[str, str] = {}
        volatile: set[str] = set()
        records: dict[str, NodeRecord] = {}
        for node_id in order:
            node = prompt[node_id]
            cls = self.registry[node.class_type]
            constants = validation.constants[node_id]
            links = node.links()
            parents = {name: (link.node, keys[link.node], link.index) for name, link in links.items()}
            pixels = own_pixels(constants) if "width" in constants else None
            if pixels is None:
                for link in links.values():
                    parent_pixels = records[link.node].pixels
                    if parent_pixels is not None and (pixels is None or parent_pixels > pixels):
                        pixels = parent_pixels
            if not cls.DETERMINISTIC or any(p in volatile for p in graph.predecessors(node_id)):
                volatile.add(node_id)
                keys[node_id] = uuid.uuid4().hex
                roots: set[str] = set()
                if cls.DETERMINISTIC:  # volatile by descent: name the non-deterministic ancestors
                    for parent in graph.predecessors(node_id):
                        if parent in volatile:
                            roots.update(records[parent].volatile_from or (parent,))
                records[node_id] = NodeRecord(node.class_type, keys[node_id], cls.VERSION, constants, None, parents,
                                              volatile=True, pixels=pixels, volatile_from=tuple(sorted(roots)))
                continue
            fingerprint = cls.fingerprint(constants, self.env)
            keys[node_id] = cache_key(node.class_type, cls.VERSION, constants, fingerprint,
                                      {name: (key, index) for name, (_, key, index) in parents.items()})
            records[node_id] = NodeRecord(node.class_type, keys[node_id], cls.VERSION, constants, fingerprint,
                                          parents, pixels=pixels)
        return keys, volatile, records

    def plan(self, validation: Validation, *, take: bool = False) -> Plan:
        """Which nodes of a valid workflow come from the cache and which must run, with the reason for each.

        `take=True` (a run) reads cache entries as hits, refreshing their age; otherwise the cache is only
        looked at, so that an estimate changes nothing.
        """
        parsed = validation.prompt
        assert parsed is not None, "only a valid workflow is planned or run"
        graph: nx.DiGraph = nx.DiGraph()
        graph.add_nodes_from(validation.nodes)
        for node_id in validation.nodes:
            for link in parsed[node_id].links().values():
                graph.add_edge(link.node, node_id)
        order = list(nx.lexicographical_topological_sort(graph))
        keys, volatile, records = self._keys(validation, order, graph)
        lookup = self.cache.get if take else self.cache.peek
        to_run: set[str] = set()
        cached: list[str] = []
        entries: dict[str, Any] = {}
        for node_id in reversed(order):
            wanted = node_id in validation.outputs or any(c in to_run for c in graph.successors(node_id))
            if not wanted:
                continue
            entry = None if node_id in volatile else lookup(keys[node_id])
            if entry is None:
                to_run.add(node_id)
            else:
                entries[node_id] = entry
                cached.append(node_id)
        cached.reverse()
        previous = {node_id: self.records.get(node_id) for node_id in order if node_id in to_run}
        return Plan(order, graph, keys, volatile, records, to_run, cached, previous, self.cache.budget,
                    self.generation, entries)

    def _remember(self, node_id: str, record: NodeRecord) -> None:
        self.records.pop(node_id, None)
        self.records[node_id] = record
        if len(self.records) > MAX_RECORDS:
            del self.records[next(iter(self.records))]

    def estimate(self, prompt: Any, outputs: list[str] | None = None,
                 history: TimingHistory | None = None) -> dict[str, Any]:
        """Which nodes a run of `prompt` would execute (the cache is consulted, nothing runs) and how long that
        should take from `history`'s recorded timings; nodes without usable history are listed as unknown."""
        validation = self.validate(prompt, outputs)
        if not validation.ok:
            raise InvalidPrompt(validation)
        plan = self.plan(validation)
        reasons = plan.reasons()
        device = self.probe.device
        nodes: list[NodeEstimate] = []
        for node_id in plan.order:
            if node_id not in plan.to_run:
                continue
            record = plan.records[node_id]
            previous = self.records.get(node_id)
            shapes = previous.shapes if previous is not None and previous.class_type == record.class_type \
                and previous.pixels == record.pixels else None
            rows = history(record.class_type, device) if history is not None else []
            ms, basis, samples = expected_time(rows, shapes, steps_of(record.constants), record.pixels)
            nodes.append(NodeEstimate(node_id, record.class_type, ms, basis, samples, reasons[node_id]))
        unknown = [n.node for n in nodes if n.expected_ms is None]
        total = sum(n.expected_ms for n in nodes if n.expected_ms is not None)
        return {"device": device, "nodes": [n.as_dict() for n in nodes], "run": [n.node for n in nodes],
                "cached": plan.cached, "total_ms": round(total, 1), "unknown": unknown, "complete": not unknown}

    def run(
        self,
        prompt: Any,
        *,
        prompt_id: str | None = None,
        outputs: list[str] | None = None,
        sink: Sink | None = None,
        interrupt: InterruptToken | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> RunResult:
        validation = self.validate(prompt, outputs)
        if not validation.ok:
            raise InvalidPrompt(validation)
        prompt_id = prompt_id or uuid.uuid4().hex
        interrupt = interrupt or InterruptToken()
        extra_data = extra_data or {}
        result = RunResult(status="success")

        def emit(event: str, data: dict[str, Any]) -> None:
            if event != "preview":
                result.messages.append([event, data])
            if sink is not None:
                sink(event, data)

        parsed = validation.prompt
        assert parsed is not None, "only a valid workflow is planned or run"
        raw_prompt = {k: v.model_dump(by_alias=True, exclude_none=True) for k, v in parsed.items()}
        plan = self.plan(validation, take=True)
        order, graph, keys, volatile, to_run, records = (plan.order, plan.graph, plan.keys, plan.volatile,
                                                         plan.to_run, plan.records)
        probe = self.probe
        result.device = probe.device
        reports = result._nodes
        values: dict[str, tuple] = {}
        for node_id in plan.cached:
            entry = plan.entries[node_id]
            values[node_id] = entry.outputs
            result.cached.append(node_id)
            if entry.ui:
                result.outputs[node_id] = entry.ui
            record = records[node_id]
            previous = self.records.get(node_id)
            if previous is not None and previous.key == record.key:
                record.shapes = previous.shapes
            record.generation = self.generation
            self._remember(node_id, record)
            reports[node_id] = {"class_type": record.class_type, "status": "cached", "key": record.key[:16],
                                "cache_bytes": entry.size}
        for node_id in plan.previous:
            reports[node_id] = {"class_type": records[node_id].class_type, "status": "pending"}
        if sink is not None:  # a listener gets the reasons now; otherwise they wait for someone to read them
            for node_id, reason in plan.reasons().items():
                reports[node_id]["reason"] = reason
        else:
            result._reasons = plan.reasons
        consumers = {n: sum(1 for c in graph.successors(n) if c in to_run) for n in order}

        emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        emit("execution_cached", {"nodes": result.cached, "prompt_id": prompt_id, "timestamp": _now_ms()})
        if sink is not None:  # not kept in `messages`: history carries the reports in full instead
            sink(REASON_EVENT, {"prompt_id": prompt_id, "nodes": dict(reports)})
        for node_id in result.cached:
            if node_id in result.outputs:
                emit("executed", {"node": node_id, "display_node": node_id, "output": result.outputs[node_id],
                                  "prompt_id": prompt_id})

        current: str | None = None
        inputs: dict[str, Any] = {}
        try:
            for node_id in order:
                if node_id not in to_run:
                    continue
                current = node_id
                interrupt.check()
                node = parsed[node_id]
                cls = self.registry[node.class_type]
                spec = self.registry.spec(node.class_type)
                inputs = dict(validation.constants[node_id])
                for name, link in node.links().items():
                    inputs[name] = values[link.node][link.index]
                for name, inp in spec.inputs.items():
                    if inp.hidden == "PROMPT":
                        inputs[name] = raw_prompt
                    elif inp.hidden == "EXTRA_PNGINFO":
                        inputs[name] = extra_data.get("extra_pnginfo")
                    elif inp.hidden == "UNIQUE_ID":
                        inputs[name] = node_id
                emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                ctx = RunContext(env=self.env, node_id=node_id, prompt_id=prompt_id, prompt=raw_prompt,
                                 extra_data=extra_data, interrupt=interrupt, sink=emit)
                probed = self._class_ms.get(node.class_type, PROBE_ABOVE_MS) >= PROBE_ABOVE_MS
                if probed:
                    probe.start()
                started = time.perf_counter()
                produced = cls.model_construct(**inputs).execute(ctx)
                peak = probe.peak_bytes() if probed else None  # first: a GPU probe waits for the node's kernels
                wall_ms = (time.perf_counter() - started) * 1000
                self._class_ms[node.class_type] = wall_ms
                out, ui = (produced.outputs, produced.ui) if isinstance(produced, NodeOutput) else (produced, None)
                out = tuple(out)
                if len(out) != len(spec.output_types):
                    raise TypeError(f"{node.class_type} returned {len(out)} outputs, "
                                    f"declared {len(spec.output_types)}")
                values[node_id] = out
                result.executed.append(node_id)
                record = records[node_id]
                record.generation = self.generation
                if probed:  # shapes matter to estimates of slow nodes only; sub-millisecond ones skip the walk
                    record.shapes = input_shapes({name: inputs[name] for name in node.links()})
                held = 0
                if node_id not in volatile:
                    record.kept = self.cache.put(keys[node_id], out, ui)
                    entry = self.cache.peek(keys[node_id]) if record.kept else None
                    held = entry.size if entry is not None else 0
                self._remember(node_id, record)
                report = {**reports[node_id], "status": "ran", "key": None if record.volatile else record.key[:16],
                          "wall_ms": round(wall_ms, 3), "peak_bytes": peak, "cache_bytes": held,
                          "shapes": record.shapes, "steps": steps_of(record.constants), "pixels": record.pixels}
                reports[node_id] = report
                if sink is not None:
                    sink(REASON_EVENT, {"prompt_id": prompt_id, "nodes": {node_id: report}})
                for parent in {link.node for link in node.links().values()}:
                    consumers[parent] -= 1
                    if consumers[parent] == 0:
                        values.pop(parent, None)
                if ui:
                    result.outputs[node_id] = ui
                    emit("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                      "prompt_id": prompt_id})
        except Interrupted:
            result.status = "interrupted"
            emit("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": current,
                "node_type": parsed[current].class_type if current else None,
                "executed": list(result.executed), "timestamp": _now_ms()})
        except Exception as exc:  # a failing node fails its run, never the engine
            result.status = "error"
            result.error = {
                "prompt_id": prompt_id,
                "node_id": current,
                "node_type": parsed[current].class_type if current else None,
                "executed": list(result.executed),
                "exception_message": str(exc) or type(exc).__name__,
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": traceback.format_exception(exc),
                "current_inputs": {k: _summarize(v) for k, v in inputs.items()},
                "current_outputs": {},
                "timestamp": _now_ms(),
            }
            emit("execution_error", result.error)
        else:
            emit("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        stopped = {"error": "failed", "interrupted": "interrupted"}.get(result.status)
        for node_id, report in list(reports.items()):
            if report["status"] == "pending":
                status = stopped if node_id == current and stopped else "not_run"
                reports[node_id] = {**report, "status": status}
        emit("executing", {"node": None, "display_node": None, "prompt_id": prompt_id})
        for listener in self.listeners:
            try:
                listener(result, prompt_id)
            except Exception:  # a listener (a full disk under the timing records) must not fail the run
                log.exception("a run listener failed for prompt %s", prompt_id)
        return result


__all__ = ["Executor", "RunResult", "InvalidPrompt"]
