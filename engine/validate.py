"""Finds every problem in a workflow before anything runs, reported in ComfyUI's error shapes.

Each fault names the node, its class and the input, so that the editor can mark it and a person can fix it;
collecting all of them at once spares the user one round trip per mistake.
"""

from __future__ import annotations

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
        lines = [f"{self.error['message']}" + (f": {self.error['details']}" if self.error.get("details") else "")]
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


def _check_constant(spec: InputSpec, value: Any, env: Environment) -> tuple[Any, list[dict[str, Any]]]:
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
        details = f"{spec.name}: {value!r} not in {list(spec.literal_choices)}" if kind == "value_not_in_list" \
            else f"{spec.name}, {value!r}, {err['msg']}"
        return value, [_error(kind, message, details, **info)]
    if spec.choices_fn is not None:
        choices = spec.choices_fn(env)
        if coerced not in choices:
            shown = choices if len(choices) <= 20 else [*choices[:20], "..."]
            return value, [_error("value_not_in_list", "Value not in list", f"{spec.name}: {value!r} not in {shown}",
                                  **info)]
    return coerced, []


def _graph_of(prompt: Prompt) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(node_id for node_id, _ in prompt.items())
    for node_id, node in prompt.items():
        for link in node.links().values():
            if link.node in prompt:
                graph.add_edge(link.node, node_id)
    return graph


def validate(
    data: Any, registry: Registry, env: Environment, outputs: list[str] | None = None
) -> Validation:
    """Validates an API-format workflow; `outputs` narrows the run to those output nodes and their ancestors."""
    try:
        prompt = parse_prompt(data)
    except PromptFormatError as exc:
        return Validation(ok=False, error=_error("invalid_prompt", "Invalid prompt", str(exc)))

    node_errors: dict[str, list[dict[str, Any]]] = {}
    constants: dict[str, dict[str, Any]] = {}

    for node_id, node in prompt.items():
        if node.class_type not in registry:
            node_errors[node_id] = [_error(
                "invalid_prompt", f"Node type '{node.class_type}' is not known",
                f"node {node_id} uses class_type {node.class_type!r}; is the node package installed?",
            )]

    graph = _graph_of(prompt)
    known = [n for n, node in prompt.items() if node.class_type in registry]
    output_ids = [n for n in known if registry.get(prompt[n].class_type).OUTPUT_NODE]
    if outputs is not None:
        missing = [o for o in outputs if o not in prompt]
        if missing:
            return Validation(ok=False, error=_error("invalid_prompt", "Invalid prompt",
                                                     f"requested outputs not in the workflow: {missing}"))
        output_ids = [o for o in outputs if o in known]
    needed = set(output_ids).union(*(nx.ancestors(graph, o) for o in output_ids)) if output_ids else set()

    for node_id in sorted(needed):
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
            info = {"input_name": name, "input_config": [inp.type, inp.options]}
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
                                       "[node_id, slot_index]", f"{name}: {raw!r}", received_value=raw, **info))
                    continue
                coerced, problems = _check_constant(inp, unwrap_constant(raw), env)
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

    needed_graph = graph.subgraph(needed)
    if not nx.is_directed_acyclic_graph(needed_graph):
        for cycle_nodes in nx.strongly_connected_components(needed_graph):
            if len(cycle_nodes) > 1 or any(graph.has_edge(n, n) for n in cycle_nodes):
                for node_id in sorted(cycle_nodes):
                    node_errors.setdefault(node_id, []).append(_error(
                        "dependency_cycle", "Dependency cycle detected",
                        f"node {node_id} depends on itself through nodes {sorted(cycle_nodes)}"))

    shaped = {
        node_id: {
            "errors": errs,
            "dependent_outputs": sorted(o for o in output_ids if o == node_id or node_id in nx.ancestors(graph, o)),
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


def _types_match(received: str, expected: str) -> bool:
    if "*" in (received, expected) or received == expected:
        return True
    return expected in received.split(",") or received in expected.split(",")
