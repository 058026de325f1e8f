"""Runs the part of a workflow that its outputs need, reusing every result the cache already holds.

The order of work: validate; compute each node's content key from its inputs and its parents' keys; walk back from
the outputs to find which nodes must really execute (a cached node's ancestors need not run); execute those in a
deterministic topological order, releasing each intermediate as soon as its last consumer has run.
"""

from __future__ import annotations

import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from latentgraph.engine.cache import Cache, cache_key
from latentgraph.engine.context import Environment, RunContext, Sink
from latentgraph.engine.interrupt import Interrupted, InterruptToken
from latentgraph.engine.node import NodeOutput
from latentgraph.engine.registry import Registry
from latentgraph.engine.validate import InvalidPrompt, Validation, validate

DEFAULT_CACHE_BYTES = 4 * 1024**3


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


def _summarize(value: Any) -> Any:
    """A short, JSON-safe description of an input for error reports (tensors by shape, not by content)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={getattr(value, 'dtype', '?')})"
    if isinstance(value, int | float | bool | str) or value is None:
        return value if not isinstance(value, str) or len(value) < 200 else value[:200] + "..."
    if isinstance(value, dict):
        return {str(k): _summarize(v) for k, v in list(value.items())[:10]}
    return type(value).__name__


class Executor:
    """Validates and runs workflows against one registry and environment, with a cache shared by all runs."""

    def __init__(self, registry: Registry, env: Environment, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.registry = registry
        self.env = env
        self.cache = Cache(cache_bytes)

    def validate(self, prompt: Any, outputs: list[str] | None = None) -> Validation:
        return validate(prompt, self.registry, self.env, outputs)

    def free(self, cache: bool = True, models: bool = True) -> None:
        if cache:
            self.cache.clear()
        if models:
            self.env.free()

    def _keys(self, validation: Validation, order: list[str], graph: nx.DiGraph) -> tuple[dict[str, str], set[str]]:
        """Content keys per node; nodes downstream of a non-deterministic one get fresh keys and are not cached."""
        prompt = validation.prompt
        keys: dict[str, str] = {}
        volatile: set[str] = set()
        for node_id in order:
            node = prompt[node_id]
            cls = self.registry.get(node.class_type)
            if not cls.DETERMINISTIC or any(p in volatile for p in graph.predecessors(node_id)):
                volatile.add(node_id)
                keys[node_id] = uuid.uuid4().hex
                continue
            constants = validation.constants[node_id]
            parents = {name: (keys[link.node], link.index) for name, link in node.links().items()}
            keys[node_id] = cache_key(node.class_type, cls.VERSION, constants,
                                      cls.fingerprint(constants, self.env), parents)
        return keys, volatile

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
        raw_prompt = {k: v.model_dump(by_alias=True, exclude_none=True) for k, v in parsed.items()}
        graph = nx.DiGraph()
        graph.add_nodes_from(validation.nodes)
        for node_id in validation.nodes:
            for link in parsed[node_id].links().values():
                graph.add_edge(link.node, node_id)
        order = list(nx.lexicographical_topological_sort(graph))
        keys, volatile = self._keys(validation, order, graph)

        values: dict[str, tuple] = {}
        to_run: set[str] = set()
        for node_id in reversed(order):
            wanted = node_id in validation.outputs or any(c in to_run for c in graph.successors(node_id))
            if not wanted:
                continue
            entry = None if node_id in volatile else self.cache.get(keys[node_id])
            if entry is None:
                to_run.add(node_id)
            else:
                values[node_id] = entry.outputs
                result.cached.append(node_id)
                if entry.ui:
                    result.outputs[node_id] = entry.ui
        result.cached.sort(key=order.index)
        consumers = {n: sum(1 for c in graph.successors(n) if c in to_run) for n in order}

        emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        emit("execution_cached", {"nodes": result.cached, "prompt_id": prompt_id, "timestamp": _now_ms()})
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
                cls = self.registry.get(node.class_type)
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
                produced = cls.model_construct(**inputs).execute(ctx)
                out, ui = (produced.outputs, produced.ui) if isinstance(produced, NodeOutput) else (produced, None)
                out = tuple(out)
                if len(out) != len(spec.output_types):
                    raise TypeError(f"{node.class_type} returned {len(out)} outputs, "
                                    f"declared {len(spec.output_types)}")
                values[node_id] = out
                result.executed.append(node_id)
                if node_id not in volatile:
                    self.cache.put(keys[node_id], out, ui)
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
        emit("executing", {"node": None, "display_node": None, "prompt_id": prompt_id})
        return result


__all__ = ["Executor", "RunResult", "InvalidPrompt"]
