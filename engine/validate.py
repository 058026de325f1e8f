"""Finds every problem in a workflow before anything runs, reported in ComfyUI's error shapes.

Each fault names the node, its class and the input, so that the editor can mark it and a person can fix it;
collecting all of them at once spares the user one round trip per mistake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from latentgraph.engine.context import Environment
from latentgraph.engine.node import InputSpec
from latentgraph.engine.registry import Registry
from latentgraph.engine.workflow import Prompt, PromptFormatError, as_link, parse_prompt, unwrap_constant
from pydantic import ValidationError

_PYDANTIC_TO_COMFY = {
    "greater_than_equal": "value_smaller_than_min",
    "greater_than": "value_smaller_than_min",
    "less_than_equal": "value_bigger_than_max",
    "less_than": "value_bigger_than_max",
    "literal_error": "value_not_in_list",
}
# How many dependent outputs one node error lists: in a chain of n outputs the full lists hold n^2/2 ids, which
# would make the answer to a small hostile request huge. The first ones (sorted) are listed, as ComfyUI would.
MAX_DEPENDENT_OUTPUTS = 20


def _error(kind: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


@dataclass
class Validation:
    """The outcome: `ok`, a top-level `error`, per-node `node_errors`, the output nodes to run, coerced constants."""

    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    prompt: Prompt | None = None
    constants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_response(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}

    def summary(self) -> str:
        error = self.error or {"message": "Prompt is valid"}
        lines = [f"{error['message']}" + (f": {error['details']}" if error.get("details") else "")]
        for node_id, entry in self.node_errors.items():
            for err in entry["errors"]:
                name = err["extra_info"].get("input_name")
                where = f"node {node_id} ({entry['class_type']})" + (f", input '{name}'" if name else "")
                detail = f" [{err['details']}]" if err.get("details") else ""
                lines.append(f"  {where}: {err['message']}{detail} ({err['type']})")
        return "\n".join(lines)


class InvalidPrompt(Exception):
    """Raised by the executor for a workflow that failed validation; nothing has run."""

    def __init__(self, validation: Validation) -> None:
        super().__init__(validation.summary())
        self.validation = validation


ChoicesCache = dict[int, tuple[list[Any], set[Any]]]


def _choices(spec: InputSpec, env: Environment, cache: ChoicesCache) -> tuple[list[Any], set[Any]]:
    """A combo's choices, listed once per validation (a listing may scan a model folder; 10,000 nodes must not
    scan it 10,000 times)."""
    assert spec.choices_fn is not None
    key = id(spec.choices_fn)
    if key not in cache:
        listed = list(spec.choices_fn(env))
        try:
            members = set(listed)
        except TypeError:  # unhashable choices: membership falls back to the list
            members = set()
        cache[key] = (listed, members)
    return cache[key]


def _check_constant(spec: InputSpec, value: Any, env: Environment,
                    cache: ChoicesCache | None = None) -> tuple[Any, list[dict[str, Any]]]:
    info = {"input_name": spec.name, "input_config": [spec.type, spec.options], "received_value": value}
    if spec.socket:
        return value, [
            _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                   f"{spec.name} expects a link of type {spec.type}", **info)
        ]
    if spec.adapter is None:
        return value, []
    try:
        coerced = spec.adapter.validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        kind = _PYDANTIC_TO_COMFY.get(err["type"], "invalid_input_type")
        bound = (err.get("ctx") or {})
        if kind == "value_smaller_than_min":
            message = f"Value {value} smaller than min of {bound.get('ge', bound.get('gt'))}"
        elif kind == "value_bigger_than_max":
            message = f"Value {value} bigger than max of {bound.get('le', bound.get('lt'))}"
        elif kind == "value_not_in_list":
            message = "Value not in list"
        else:
            message = f"Failed to convert an input value to a {spec.type} value"
        details = f"{spec.name}: {value!r} not in {list(spec.literal_choices or ())}" if kind == "value_not_in_list" \
            else f"{spec.name}, {value!r}, {err['msg']}"
        return value, [_error(kind, message, details, **info)]
    if spec.choices_fn is not None:
        choices, members = _choices(spec, env, {} if cache is None else cache)
        try:
            found = coerced in members if members else coerced in choices
        except TypeError:
            found = coerced in choices
        if not found:
            shown = choices if len(choices) <= 20 else [*choices[:20], "..."]
            return value, [_error("value_not_in_list", "Value not in list", f"{spec.name}: {value!r} not in {shown}",
                                  **info)]
    return coerced, []


@dataclass
class _Graph:
    """Who feeds whom, as plain adjacency lists: walking these is several times cheaper than networkx calls, and
    validation runs on every request."""

    parents: dict[str, list[str]]
    children: dict[str, list[str]]

    @classmethod
    def of(cls, prompt: Prompt) -> _Graph:
        parents: dict[str, list[str]] = {node_id: [] for node_id, _ in prompt.items()}
        children: dict[str, list[str]] = {node_id: [] for node_id in parents}
        for node_id, node in prompt.items():
            for source in dict.fromkeys(link.node for link in node.links().values()):
                if source in parents:
                    parents[node_id].append(source)
                    children[source].append(node_id)
        return cls(parents, children)

    def ancestors_of_all(self, roots: list[str]) -> set[str]:
        """Every node some root depends on, and the roots: one walk for all of them, linear in nodes + links."""
        seen, stack = set(roots), list(roots)
        while stack:
            for parent in self.parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def topological(self) -> tuple[list[str], set[str]]:
        """Kahn's order of the acyclic part, and the nodes left over (on a cycle or downstream of one)."""
        indegree = {node: len(parents) for node, parents in self.parents.items()}
        order = [node for node, degree in indegree.items() if degree == 0]
        for node in order:  # grows while it is walked
            for child in self.children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    order.append(child)
        placed = set(order)
        return order, {node for node in self.parents if node not in placed}

    def as_networkx(self, nodes: set[str]) -> nx.DiGraph:
        """The subgraph of `nodes` (only cyclic parts are handed to networkx; every caller names them)."""
        graph: nx.DiGraph = nx.DiGraph()
        graph.add_nodes_from(nodes)
        graph.add_edges_from((p, n) for n in nodes for p in self.parents[n] if p in nodes)
        return graph


def _lowest_bits(value: int, limit: int) -> list[int]:
    """Positions of the lowest `limit` set bits of `value`, ascending, without decoding all of a huge int."""
    found: list[int] = []
    base = 0
    window = 4 * limit + 64
    while value and len(found) < limit:
        zeros = (value & -value).bit_length() - 1
        value >>= zeros
        base += zeros
        digits = bin(value & ((1 << window) - 1))
        end = len(digits)
        while len(found) < limit:
            end = digits.rfind("1", 2, end)
            if end < 0:
                break
            found.append(base + len(digits) - 1 - end)
        value >>= window
        base += window
    return found


def _dependent_outputs(graph: _Graph, order: list[str], cyclic: set[str], output_ids: list[str],
                       wanted: set[str]) -> dict[str, list[str]]:
    """For each node in `wanted`, the sorted output nodes that depend on it (itself included), capped.

    Reachability is computed once, in reverse topological order, with one bitset (a Python int) per node, instead
    of one ancestor search per node and output: a chain of thousands of failing outputs costs milliseconds, not
    hours. Nodes on cycles are merged into their strongly connected components first.
    """
    if not wanted or not output_ids:
        return {n: [] for n in wanted}
    ordered = sorted(output_ids)
    bit = {o: 1 << i for i, o in enumerate(ordered)}
    component: dict[str, Any] = {n: n for n in order}
    groups: dict[Any, list[str]] = {n: [n] for n in order}
    successors: Callable[[Any], Any] = lambda c: (component[child] for child in graph.children[c])  # noqa: E731
    walk: list[Any] = list(order)
    if cyclic:
        condensed = nx.condensation(graph.as_networkx(cyclic))
        for index in condensed.nodes:
            members = sorted(condensed.nodes[index]["members"])
            groups[("scc", index)] = members
            for member in members:
                component[member] = ("scc", index)
        walk += [("scc", index) for index in nx.topological_sort(condensed)]

        def successors(c: Any) -> Any:
            return (component[child] for member in groups[c] for child in graph.children[member])

    mask: dict[Any, int] = {}
    for group in reversed(walk):
        value = 0
        for member in groups[group]:
            value |= bit.get(member, 0)
        for child in successors(group):
            if child != group:
                value |= mask[child]
        mask[group] = value
    return {node: [ordered[i] for i in _lowest_bits(mask[component[node]], MAX_DEPENDENT_OUTPUTS)]
            for node in wanted}


class ValidationTimeout(Exception):
    """Validation ran past its time budget."""


def validate(
    data: Any, registry: Registry, env: Environment, outputs: list[str] | None = None, *,
    time_budget_s: float | None = None,
) -> Validation:
    """Validates an API-format workflow; `outputs` narrows the run to those output nodes and their ancestors.

    The cost is near-linear in nodes + links. With `time_budget_s` a validation that runs longer (a node's own
    check that is slow on thousands of nodes) stops and answers `validation_timeout` instead of holding the
    server's validation thread.
    """
    try:
        return _validate(data, registry, env, outputs, time_budget_s)
    except ValidationTimeout:
        return Validation(ok=False, error=_error(
            "validation_timeout", "Validation took too long",
            f"the workflow could not be validated within {time_budget_s} s; it is too large or too complex"))


def _validate(data: Any, registry: Registry, env: Environment, outputs: list[str] | None,
              time_budget_s: float | None) -> Validation:
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    try:
        prompt = parse_prompt(registry.expand(data, env))
    except (PromptFormatError, ValueError) as exc:  # not a workflow, or refused (an unknown saved workflow)
        return Validation(ok=False, error=_error("invalid_prompt", "Invalid prompt", str(exc)))

    node_errors: dict[str, list[dict[str, Any]]] = {}
    constants: dict[str, dict[str, Any]] = {}
    choices: ChoicesCache = {}

    for node_id, node in prompt.items():
        if node.class_type not in registry:
            node_errors[node_id] = [_error(
                "invalid_prompt", f"Node type '{node.class_type}' is not known",
                f"node {node_id} uses class_type {node.class_type!r}; is the node package installed?",
            )]

    graph = _Graph.of(prompt)
    known = [n for n, node in prompt.items() if node.class_type in registry]
    output_ids = [n for n in known if registry[prompt[n].class_type].OUTPUT_NODE]
    if outputs is not None:
        missing = [o for o in outputs if o not in prompt]
        if missing:
            return Validation(ok=False, error=_error("invalid_prompt", "Invalid prompt",
                                                     f"requested outputs not in the workflow: {missing}"[:2000]))
        output_ids = [o for o in dict.fromkeys(outputs) if o in known]
    needed = graph.ancestors_of_all(output_ids)

    checked: Callable[[], None] = (lambda: None) if deadline is None else (lambda: _check_deadline(deadline))
    for node_id in sorted(needed):
        checked()
        node = prompt[node_id]
        cls = registry.get(node.class_type)
        if cls is None:
            continue
        spec = registry.spec(node.class_type)
        errs: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        for name, inp in spec.inputs.items():
            if inp.hidden:
                continue
            info: dict[str, Any] = {"input_name": name, "input_config": [inp.type, inp.options]}
            if name not in node.inputs:
                if inp.required and not inp.has_default:
                    errs.append(_error("required_input_missing", "Required input is missing", name, **info))
                elif inp.has_default and not inp.socket:
                    values[name] = inp.default
                continue
            raw = node.inputs[name]
            link = as_link(raw)
            if link is None:
                if isinstance(raw, list) and inp.socket:
                    errs.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of "
                                       "[node_id, slot_index]", f"{name}: {raw!r}"[:500], received_value=raw,
                                       **info))
                    continue
                coerced, problems = _check_constant(inp, unwrap_constant(raw), env, choices)
                errs.extend(problems)
                values[name] = coerced
                continue
            info["linked_node"] = [link.node, link.index]
            source = prompt.root.get(link.node)
            if source is None:
                errs.append(_error("bad_linked_input", "Linked node does not exist",
                                   f"{name} is linked to node {link.node}, which is not in the workflow", **info))
                continue
            source_cls = registry.get(source.class_type)
            if source_cls is None:
                continue  # already reported on the source node
            out_types = registry.spec(source.class_type).output_types
            if not 0 <= link.index < len(out_types):
                errs.append(_error("bad_linked_input", "Linked output does not exist",
                                   f"{name} is linked to output {link.index} of node {link.node} "
                                   f"({source.class_type}), which has {len(out_types)} outputs", **info))
                continue
            received = out_types[link.index]
            if not _types_match(received, inp.type):
                errs.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                   f"{name}, received_type({received}) mismatch input_type({inp.type})",
                                   received_type=received, **info))
        if not errs:
            for name, message in cls.check(values, env):
                errs.append(_error("custom_validation_failed", message, name, input_name=name,
                                   received_value=values.get(name)))
        constants[node_id] = values
        if errs:
            node_errors.setdefault(node_id, []).extend(errs)

    order, cyclic = graph.topological()
    if cyclic & needed:
        cyclic_graph = graph.as_networkx(cyclic & needed)
        for cycle_nodes in nx.strongly_connected_components(cyclic_graph):
            if len(cycle_nodes) > 1 or any(cyclic_graph.has_edge(n, n) for n in cycle_nodes):
                shown = sorted(cycle_nodes)
                listed = str(shown[:20])[:-1] + (", ...]" if len(shown) > 20 else "]")
                for node_id in shown:
                    node_errors.setdefault(node_id, []).append(_error(
                        "dependency_cycle", "Dependency cycle detected",
                        f"node {node_id} depends on itself through nodes {listed}"))
    checked()

    dependents = _dependent_outputs(graph, order, cyclic, output_ids, set(node_errors))
    shaped = {
        node_id: {
            "errors": errs,
            "dependent_outputs": dependents[node_id],
            "class_type": prompt[node_id].class_type,
        }
        for node_id, errs in sorted(node_errors.items())
    }
    if not output_ids:
        return Validation(ok=False, error=_error("prompt_no_outputs", "Prompt has no outputs",
                                                 "add an output node such as SaveImage or PreviewImage"),
                          node_errors=shaped, prompt=prompt)
    if shaped:
        return Validation(ok=False, error=_error("prompt_outputs_failed_validation",
                                                 "Prompt outputs failed validation",
                                                 f"{len(shaped)} node(s) have errors"),
                          node_errors=shaped, outputs=output_ids, prompt=prompt)
    return Validation(ok=True, outputs=output_ids, nodes=sorted(needed), prompt=prompt, constants=constants)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise ValidationTimeout


def _types_match(received: str, expected: str) -> bool:
    if "*" in (received, expected) or received == expected:
        return True
    return expected in received.split(",") or received in expected.split(",")
