"""Workflow formats: the editor's UI (litegraph) format <-> the API (prompt) format, and workflow files.

ComfyUI converts UI to API only in the browser; doing it here lets `latentgraph run`, `convert` and `POST /prompt`
take a workflow exactly as the editor saved it. The rules follow the editor's own `graphToPrompt`: positional
`widgets_values` in the order of the node's widget inputs (with the UI-only control and upload values), links,
muted nodes left out, bypassed nodes wired through by type, virtual nodes (Reroute, PrimitiveNode, Note) resolved
away and subgraphs flattened with `outer:inner` ids. Everything is driven by ComfyUI-shaped `object_info`; what
counts as a link in an API prompt is engine.workflow's rule (`as_link`), the one the validator and executor use.

`load_workflow` reads whatever file a user has: API-format JSON, an editor (UI-format) JSON, or a PNG. A PNG saved
by SaveImage (ours or ComfyUI's) carries the API prompt in its `prompt` text chunk and the editor's graph in
`workflow`; the prompt is what actually ran, so it is preferred, and the graph is converted when it is the only one
there. Nothing here knows HTTP: the server, the CLI and the workflow library all use this module.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgraph.engine.workflow import as_link, unwrap_constant

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
CONTROL_NAMES = frozenset({"seed", "noise_seed"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
MODE_MUTED, MODE_BYPASSED = 2, 4
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20
MAX_SUBGRAPH_DEPTH = 32
DEFAULT_MAX_NODES = 100_000  # expanded nodes; the server passes its own, smaller limit
MAX_HOPS = 10_000  # reroutes, bypassed nodes and subgraph borders one link may pass through


class ConversionError(ValueError):
    """A UI workflow that cannot be turned into an API prompt; names the node when one is at fault."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None,
                 unknown: list[tuple[str, str]] | None = None) -> None:
        self.node_id, self.node_type = node_id, node_type
        self.unknown: list[tuple[str, str]] = list(unknown or [])  # every (node id, type) nothing here provides
        prefix = f"node {node_id} ({node_type}): " if node_id is not None else ""
        super().__init__(prefix + message)


def is_ui_format(data: Any) -> bool:
    """True for an editor (litegraph) workflow, False for an API prompt or anything else."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


# ---------------------------------------------------------------- object_info helpers


@dataclass(frozen=True)
class _Slot:
    """One entry of a node's `widgets_values`: a widget input, or the UI-only value that follows it."""

    name: str
    extra: str | None = None  # "control" or "upload" for the UI-only values
    kind: Any = None


def _input_specs(info: dict) -> dict[str, tuple[Any, dict]]:
    specs: dict[str, tuple[Any, dict]] = {}
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            spec = list(spec) if isinstance(spec, (list, tuple)) else [spec]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs[name] = (spec[0], options)
    return specs


def _input_order(info: dict) -> list[str]:
    order = info.get("input_order")
    if order:
        return [*order.get("required", []), *order.get("optional", [])]
    return [name for section in ("required", "optional") for name in (info.get("input", {}).get(section) or {})]


def _is_widget(kind: Any, options: dict) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _widget_default(kind: Any, options: dict) -> Any:
    if "default" in options:
        return options["default"]
    choices = kind if isinstance(kind, list) else options.get("options")
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def _has_control(name: str, kind: Any, options: dict) -> bool:
    return bool(options.get("control_after_generate")) or (kind == "INT" and name in CONTROL_NAMES)


def _widget_slots(info: dict, skip: frozenset[str] = frozenset(), extras: bool = True) -> list[_Slot]:
    specs = _input_specs(info)
    slots: list[_Slot] = []
    for name in _input_order(info):
        if name not in specs or name in skip or not _is_widget(*specs[name]):
            continue
        kind, options = specs[name]
        slots.append(_Slot(name, kind=kind if isinstance(kind, str) else "COMBO"))
        if extras and _has_control(name, kind, options):
            slots.append(_Slot(name, "control"))
        if extras and any(options.get(key) for key in UPLOAD_OPTIONS):
            slots.append(_Slot(name, "upload"))
    return slots


def _plausible(slot: _Slot, value: Any) -> bool:
    """Whether a value can sit in this slot; tells apart files that have or lack the UI-only values."""
    if slot.extra == "control":
        return isinstance(value, str) and value in CONTROL_VALUES
    if slot.extra == "upload":
        return value in ("image", "upload", None)
    if slot.kind in ("INT", "FLOAT"):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if slot.kind == "BOOLEAN":
        return value is None or isinstance(value, bool)
    return True


def _greedy_assign(slots: list[_Slot], values: list[Any]) -> dict[str, Any] | None:
    """Walk the slots, taking an optional UI-only value only where the value looks like one."""
    named: dict[str, Any] = {}
    i = 0
    for slot in slots:
        if i >= len(values):
            break
        if slot.extra is not None and not _plausible(slot, values[i]):
            continue
        if slot.extra is None:
            named[slot.name] = values[i]
        i += 1
    return named if i == len(values) else None


def widgets_to_inputs(
    node: dict, info: dict, linked_widgets: frozenset[str], node_id: str | None = None
) -> dict[str, Any]:
    """Map a UI node's `widgets_values` to input names, the way the editor lays them out.

    Files differ in whether linked (converted) widgets keep their place and whether the UI-only values are
    present, so the layout whose length fits the values is taken; `widgets_values_named` wins when present.
    """
    node_id, node_type = node_id or str(node.get("id")), str(node.get("type"))
    named = node.get("widgets_values_named")
    values = node.get("widgets_values")
    if isinstance(named, dict):
        return dict(named)
    if isinstance(values, dict):
        return dict(values)
    values = list(values or [])
    if not values or not _widget_slots(info):
        return {}  # a node that declares no widgets: its values are the editor's own display widgets (PreviewAny's)
    layouts = [
        _widget_slots(info),
        _widget_slots(info, skip=linked_widgets),
        _widget_slots(info, extras=False),
        _widget_slots(info, skip=linked_widgets, extras=False),
    ]
    for slots in layouts:
        if len(slots) == len(values) and all(_plausible(s, v) for s, v in zip(slots, values)):
            return {slot.name: value for slot, value in zip(slots, values) if slot.extra is None}
    for slots in layouts:
        assigned = _greedy_assign(slots, values)
        if assigned is not None:
            return assigned
    names = [slot.name for slot in layouts[2]]
    raise ConversionError(
        f"has {len(values)} widget values {values!r} but its inputs {names} do not fit them; "
        "the workflow was probably saved with a different version of this node",
        node_id, node_type,
    )


# ---------------------------------------------------------------- UI -> API


@dataclass
class _Link:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: Any


@dataclass
class _Scope:
    """One graph level: the top-level workflow or the inside of one subgraph instance."""

    prefix: str
    nodes: dict[int, dict]
    links: dict[int, _Link]
    definition: dict | None = None
    instance: dict | None = None
    parent: _Scope | None = None
    children: dict[int, _Scope] = field(default_factory=dict)

    def full_id(self, node_id: Any) -> str:
        return f"{self.prefix}{node_id}"


class _Muted:
    """A link whose source is a muted node: the input is left out, as the editor does."""


MUTED = _Muted()


@dataclass(frozen=True)
class _Const:
    value: Any


def _link_id(value: Any, where: str = "") -> int:
    """A link id as the editor writes it (an integer, maybe as a string); anything else is a ConversionError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConversionError(f"link id {str(value)[:60]!r}{where} is not a number")
    try:
        return int(value)
    except (ValueError, OverflowError) as exc:
        raise ConversionError(f"link id {str(value)[:60]!r}{where} is not a number") from exc


def _parse_links(raw_links: Any) -> dict[int, _Link]:
    links: dict[int, _Link] = {}
    if raw_links is not None and not isinstance(raw_links, list):
        raise ConversionError(f"'links' must be a list, not {type(raw_links).__name__}")
    for raw in raw_links or []:
        if isinstance(raw, dict):
            missing = [k for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot") if k not in raw]
            if missing:
                raise ConversionError(f"link {str(raw)[:120]} lacks {missing}")
            link = _Link(raw["origin_id"], raw["origin_slot"], raw["target_id"], raw["target_slot"], raw.get("type"))
            links[_link_id(raw["id"])] = link
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            links[_link_id(raw[0])] = _Link(raw[1], raw[2], raw[3], raw[4], raw[5] if len(raw) > 5 else None)
        elif raw is not None:
            raise ConversionError(f"link {str(raw)[:120]} is neither [id, origin, slot, target, slot, type] nor an "
                                  "object")
    for link in links.values():
        if not isinstance(link.origin_slot, int) or isinstance(link.origin_slot, bool):
            raise ConversionError(f"link from node {str(link.origin_id)[:40]} has a slot that is not an integer: "
                                  f"{str(link.origin_slot)[:40]}")
    return links


def _node_inputs(node: dict) -> list[dict]:
    """A node's `inputs`: a list of objects, or a ConversionError naming the node."""
    inputs = node.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ConversionError("'inputs' must be a list of objects", str(node.get("id")), str(node.get("type")))
    return inputs


def _node_map(nodes: Any) -> dict[int, dict]:
    result: dict[int, dict] = {}
    if nodes is not None and not isinstance(nodes, list):
        raise ConversionError(f"'nodes' must be a list, not {type(nodes).__name__}")
    for node in nodes or []:
        if not isinstance(node, dict) or "id" not in node or "type" not in node:
            raise ConversionError(f"a node entry lacks 'id' or 'type': {str(node)[:120]}")
        try:
            result[node["id"]] = node
        except TypeError as exc:  # an unhashable id (a list or an object)
            raise ConversionError(f"a node id must be a number or a string: {str(node['id'])[:60]}") from exc
        _node_inputs(node)
    return result


def _expanded_size(workflow: dict, subgraphs: dict[str, dict], max_nodes: int) -> None:
    """Refuses a workflow whose subgraphs would expand past `max_nodes` nodes or MAX_SUBGRAPH_DEPTH levels.

    Counted from the definitions before anything is expanded (a 3 KB workflow whose subgraphs each hold 8 copies
    of the next expands 8^depth-fold): each definition's expanded size and depth is computed once, bottom up.
    """
    size: dict[str, int] = {}
    depth: dict[str, int] = {}
    on_path: set[str] = set()

    def children(nodes: Any) -> list[str]:
        return [str(n["type"]) for n in nodes or [] if isinstance(n, dict) and str(n.get("type")) in subgraphs]

    for start in subgraphs:
        if start in size:
            continue
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            name, done = stack.pop()
            if done:
                on_path.discard(name)
                nodes = subgraphs[name].get("nodes") or []
                inner = children(nodes)
                total = len(nodes) - len(inner) + sum(size[c] for c in inner)
                size[name] = min(total, max_nodes + 1)
                depth[name] = 1 + max((depth[c] for c in inner), default=0)
                continue
            if name in size:
                continue
            if name in on_path:
                raise ConversionError(f"subgraph {name[:60]} contains itself")
            on_path.add(name)
            stack.append((name, True))
            stack.extend((c, False) for c in children(subgraphs[name].get("nodes")) if c not in size)
    top = workflow.get("nodes") or []
    inner = children(top)
    total = len(top) - len(inner) + sum(size[c] for c in inner)
    deepest = max((depth[c] for c in inner), default=0)
    if deepest > MAX_SUBGRAPH_DEPTH:
        raise ConversionError(f"subgraphs nest {deepest} levels deep; at most {MAX_SUBGRAPH_DEPTH} are accepted")
    if total > max_nodes:
        raise ConversionError(f"the workflow expands to more than {max_nodes} nodes once its subgraphs are "
                              "expanded; this server accepts at most that many")


class _Converter:
    def __init__(self, workflow: dict, object_info: dict, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        self.object_info = object_info
        definitions = workflow.get("definitions") or {}
        definitions = definitions.get("subgraphs") or [] if isinstance(definitions, dict) else []
        if not isinstance(definitions, list):
            raise ConversionError("'definitions.subgraphs' must be a list")
        self.subgraphs: dict[str, dict] = {str(d["id"]): d for d in definitions if isinstance(d, dict) and "id" in d}
        _expanded_size(workflow, self.subgraphs, max_nodes)
        self.root = _Scope("", _node_map(workflow["nodes"]), _parse_links(workflow.get("links")))
        self.prompt: dict[str, dict] = {}
        self._resolved: dict[tuple[Any, ...], Any] = {}

    def convert(self) -> dict[str, dict]:
        self.unknown: list[tuple[str, str]] = []
        self._emit_scope(self.root, depth=0)
        if self.unknown:  # all of them at once: a user installs every missing package in one go
            (first_id, first_type), others = self.unknown[0], self.unknown[1:]
            more = f" (also unknown: {', '.join(f'node {i} ({t})' for i, t in others)})" if others else ""
            raise ConversionError(f"unknown node type; install the node package that provides it{more}",
                                  first_id, first_type, unknown=self.unknown)
        return self.prompt

    # ---- scopes

    def _child(self, scope: _Scope, node: dict, depth: int) -> _Scope:
        if node["id"] not in scope.children:
            if depth > MAX_SUBGRAPH_DEPTH:
                raise ConversionError(f"subgraphs nest more than {MAX_SUBGRAPH_DEPTH} levels deep",
                                      scope.full_id(node["id"]), node["type"])
            definition = self.subgraphs[str(node["type"])]
            scope.children[node["id"]] = _Scope(
                f"{scope.full_id(node['id'])}:", _node_map(definition.get("nodes")),
                _parse_links(definition.get("links")), definition, node, scope,
            )
        return scope.children[node["id"]]

    def _emit_scope(self, scope: _Scope, depth: int) -> None:
        for node in scope.nodes.values():
            mode = node.get("mode", 0)
            node_type = str(node["type"])
            if mode in (MODE_MUTED, MODE_BYPASSED) or node_type in NOTE_TYPES:
                continue
            if node_type in ("Reroute", "PrimitiveNode"):
                continue
            if node_type in self.subgraphs:
                self._emit_scope(self._child(scope, node, depth + 1), depth + 1)
                continue
            if node_type not in self.object_info:
                if self._is_frontend_only(node):
                    continue
                self.unknown.append((scope.full_id(node["id"]), node_type))
                continue
            self.prompt[scope.full_id(node["id"])] = self._emit_node(scope, node, depth)

    @staticmethod
    def _is_frontend_only(node: dict) -> bool:
        """Nodes the editor never sends (no outputs and no inputs that are linked), like labels and notes."""
        return not node.get("outputs") and not any(i.get("link") is not None for i in _node_inputs(node))

    def _emit_node(self, scope: _Scope, node: dict, depth: int) -> dict:
        node_id, node_type = scope.full_id(node["id"]), str(node["type"])
        info = self.object_info[node_type]
        specs = _input_specs(info)
        ui_inputs = _node_inputs(node)
        linked = frozenset(i["name"] for i in ui_inputs if i.get("link") is not None and "name" in i)
        inputs: dict[str, Any] = {}
        for name, value in widgets_to_inputs(node, info, linked, node_id).items():
            if name in specs:
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        for name in _input_order(info):
            kind, options = specs.get(name, (None, {}))
            if name not in inputs and name in specs and _is_widget(kind, options) and "default" in options:
                inputs[name] = options["default"]
        for ui_input in ui_inputs:
            linked_name = ui_input.get("name")
            if linked_name is None or ui_input.get("link") is None:
                continue
            want = ui_input.get("type") or (specs.get(linked_name, (None, {}))[0])
            source = self._follow_link(scope, ui_input["link"], want, depth, node_id, node_type)
            if source is MUTED:
                inputs.pop(linked_name, None)
            elif isinstance(source, _Const):
                inputs[linked_name] = {"__value__": source.value} if isinstance(source.value, list) else source.value
            elif source is not None:
                inputs[linked_name] = source
        title = node.get("title") or info.get("display_name") or node_type
        return {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}

    # ---- link resolution

    def _follow_link(self, scope: _Scope, link_id: Any, want: Any, depth: int, node_id: str, node_type: str) -> Any:
        link = scope.links.get(_link_id(link_id, f" (an input of node {node_id})"))
        if link is None:
            raise ConversionError(f"input refers to link {link_id}, which the workflow does not have",
                                  node_id, node_type)
        return self._source(scope, link.origin_id, link.origin_slot, want, depth, node_id, node_type)

    def _source(self, scope: _Scope, origin_id: Any, origin_slot: int, want: Any, depth: int,
                node_id: str, node_type: str) -> Any:
        """What feeds an input: `[id, slot]`, a `_Const`, `MUTED`, or None (nothing; the widget value stays).

        Every hop's answer is remembered, so that many inputs fed through one long reroute chain walk it once.
        """
        visited: list[tuple[Any, ...]] = []
        result = self._walk(scope, origin_id, origin_slot, want, depth, node_id, node_type, visited)
        for key in visited:
            self._resolved[key] = result
        return list(result) if isinstance(result, list) else result

    def _walk(self, scope: _Scope, origin_id: Any, origin_slot: int, want: Any, depth: int,
              node_id: str, node_type: str, visited: list[tuple[Any, ...]]) -> Any:
        """A loop, not recursion: a chain of thousands of reroutes must end in an answer or a 400, never in
        Python's recursion limit."""
        wanted = str(_type_name(want))
        for _ in range(MAX_HOPS):
            key = (id(scope), origin_id if isinstance(origin_id, int | str) else repr(origin_id), origin_slot, wanted)
            if key in self._resolved:
                return self._resolved[key]
            visited.append(key)
            if origin_id == SUBGRAPH_INPUT_NODE and scope.instance is not None and scope.parent is not None:
                instance, parent = scope.instance, scope.parent
                inputs = _node_inputs(instance)
                if 0 <= origin_slot < len(inputs) and inputs[origin_slot].get("link") is not None:
                    link = parent.links.get(_link_id(inputs[origin_slot]["link"]))
                    if link is None:
                        raise ConversionError(f"input refers to link {inputs[origin_slot]['link']}, which the "
                                              "workflow does not have", parent.full_id(instance["id"]),
                                              str(instance["type"]))
                    scope, origin_id, origin_slot, depth = parent, link.origin_id, link.origin_slot, depth - 1
                    continue
                value = self._instance_widget_value(instance, scope.definition or {}, origin_slot)
                return None if value is None else _Const(value)
            try:
                origin = scope.nodes.get(origin_id)
            except TypeError:  # an unhashable id
                origin = None
            if origin is None:
                raise ConversionError(f"a link comes from node {str(origin_id)[:60]}, which the workflow does not "
                                      "have", node_id, node_type)
            origin_type = str(origin["type"])
            mode = origin.get("mode", 0)
            if mode == MODE_MUTED:
                return MUTED
            if origin_type == "PrimitiveNode":
                values = origin.get("widgets_values") or []
                if not values or not isinstance(values, list):
                    raise ConversionError("primitive node has no value", scope.full_id(origin_id), origin_type)
                return _Const(values[0])
            if origin_type == "Reroute" or mode == MODE_BYPASSED:
                slot_index = 0 if origin_type == "Reroute" else self._bypass_input(origin, origin_slot, want)
                inputs = _node_inputs(origin)
                if slot_index is None or slot_index >= len(inputs):
                    return None
                link_id = inputs[slot_index].get("link")
                if link_id is None:
                    return None
                link = scope.links.get(_link_id(link_id))
                if link is None:
                    raise ConversionError(f"input refers to link {link_id}, which the workflow does not have",
                                          scope.full_id(origin_id), origin_type)
                origin_id, origin_slot = link.origin_id, link.origin_slot
                continue
            if origin_type in self.subgraphs:
                inner = self._child(scope, origin, depth + 1)
                found = next((link for link in inner.links.values()
                              if link.target_id == SUBGRAPH_OUTPUT_NODE and link.target_slot == origin_slot), None)
                if found is None:
                    return None
                scope, origin_id, origin_slot, depth = inner, found.origin_id, found.origin_slot, depth + 1
                continue
            return [scope.full_id(origin_id), int(origin_slot)]
        raise ConversionError("a loop of reroutes or bypassed nodes feeds this node", node_id, node_type)

    @staticmethod
    def _instance_widget_value(instance: dict, definition: dict, slot: int) -> Any:
        """The value a subgraph instance shows in the widget of an unlinked subgraph input, if it has one."""
        inputs = _node_inputs(instance)
        values = instance.get("widgets_values")
        if slot >= len(inputs) or not isinstance(values, list) or not inputs[slot].get("widget"):
            return None
        position = sum(1 for i in inputs[:slot] if i.get("widget"))
        return values[position] if position < len(values) else None

    @staticmethod
    def _bypass_input(node: dict, origin_slot: int, want: Any) -> int | None:
        """The input a bypassed node passes through: the same slot if its type fits, else the first that does."""
        inputs = _node_inputs(node)
        for index in [origin_slot, *range(len(inputs))]:
            if 0 <= index < len(inputs) and _same_type(inputs[index].get("type"), want):
                return index
        return None


def _type_name(kind: Any) -> Any:
    return "COMBO" if isinstance(kind, list) else kind


def _same_type(a: Any, b: Any) -> bool:
    a, b = _type_name(a), _type_name(b)
    return a is not None and b is not None and (a == b or a == "*" or b == "*")


def ui_to_api(workflow: dict, object_info: dict, *, max_nodes: int = DEFAULT_MAX_NODES) -> dict[str, dict]:
    """The API prompt the editor would queue for this UI workflow. Raises ConversionError naming the node.

    A workflow that would expand past `max_nodes` nodes is refused before anything is expanded. Whatever else is
    malformed in the document (a wrong type where the editor writes an object or a number) is a ConversionError
    too, never another exception: the server answers it 400.
    """
    if not is_ui_format(workflow):
        raise ConversionError("not an editor (UI format) workflow: expected an object with 'nodes' and 'links'")
    try:
        return _Converter(workflow, object_info, max_nodes).convert()
    except ConversionError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise ConversionError(f"the editor workflow is malformed: {type(exc).__name__}: {str(exc)[:200]}") from exc


# ---------------------------------------------------------------- API -> UI

# Compact enough that the editor, fitting a template into a 1920x1080 window, draws titles and widgets (its
# low-quality threshold is a zoom of 0.57): columns 330 px apart, none taller than MAX_COLUMN_HEIGHT.
COLUMN_GAP, ROW_GAP, NODE_WIDTH, LEFT, TOP = 50, 30, 280, 40, 40
MAX_COLUMN_HEIGHT = 900  # a taller column continues in a second one beside it
LOOSE_STEP = 260  # horizontal pitch of collapsed unlinked nodes in the band under the graph
SLOT_HEIGHT, WIDGET_HEIGHT, TITLE_HEIGHT, MULTILINE_HEIGHT = 22, 26, 30, 110


def _depths(prompt: dict[str, dict]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str, trail: frozenset[str]) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in trail:
            raise ConversionError("is part of a cycle", node_id, prompt[node_id].get("class_type"))
        parents = [link.node for v in prompt[node_id].get("inputs", {}).values()
                   if (link := as_link(v)) is not None and link.node in prompt]
        depth[node_id] = 1 + max((visit(p, trail | {node_id}) for p in parents), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id, frozenset())
    # A node with no inputs sits just left of its first consumer (an empty latent beside the prompts).
    for node_id in prompt:
        if depth[node_id] == 0:
            children = [depth[c] for c, node in prompt.items()
                        if any((link := as_link(v)) is not None and link.node == node_id
                               for v in node.get("inputs", {}).values())]
            if children:
                depth[node_id] = min(children) - 1
    return depth


def _sort_key(node_id: str) -> tuple[int, Any]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _node_height(info: dict, n_inputs: int, n_outputs: int) -> int:
    specs = _input_specs(info)
    widgets = [n for n in _input_order(info) if n in specs and _is_widget(*specs[n])]
    multiline = sum(1 for n in widgets if specs[n][1].get("multiline"))
    sockets = max(n_inputs - len(widgets), n_outputs)
    return TITLE_HEIGHT + SLOT_HEIGHT * sockets + WIDGET_HEIGHT * len(widgets) + MULTILINE_HEIGHT * multiline + 10


def api_to_ui(prompt: dict[str, dict], object_info: dict) -> dict[str, Any]:
    """A UI-format workflow for an API prompt, laid out in columns by topological depth, left to right.

    Numeric node ids are kept so that converting back gives the same prompt; others are numbered after them.
    """
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") not in object_info:
            node_type = node.get("class_type") if isinstance(node, dict) else None
            raise ConversionError("unknown node type; cannot lay out its widgets", node_id, node_type)
    ids = sorted(prompt, key=_sort_key)
    numeric = [int(i) for i in ids if i.isdigit()]
    next_id = max(numeric, default=0) + 1
    ui_id: dict[str, int] = {}
    for node_id in ids:
        if node_id.isdigit():
            ui_id[node_id] = int(node_id)
        else:
            ui_id[node_id], next_id = next_id, next_id + 1

    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    in_link: dict[tuple[str, str], int] = {}
    for node_id in ids:
        for name, value in prompt[node_id].get("inputs", {}).items():
            if (link := as_link(value)) is not None and link.node in prompt:
                origin, slot = link.node, link.index
                outputs = object_info[prompt[origin]["class_type"]].get("output") or []
                kind = outputs[slot] if slot < len(outputs) else "*"
                link_id = len(links) + 1
                links.append([link_id, ui_id[origin], slot, ui_id[node_id], None, _type_name(kind)])
                out_links[(origin, slot)].append(link_id)
                in_link[(node_id, name)] = link_id

    depth = _depths(prompt)
    # Nodes linked to nothing (a workflow's declarations: its inputs, outputs, description) would stack into one
    # tall first column and make the editor open the graph zoomed out past legibility; they go collapsed in a
    # band under the graph instead.
    linked = {n for link in links for n in (link[1], link[3])}
    loose = [n for n in ids if ui_id[n] not in linked] if linked else []
    columns: dict[int, list[str]] = defaultdict(list)
    for node_id in ids:
        if node_id not in loose:
            columns[depth[node_id]].append(node_id)

    nodes: list[dict] = []
    row_of: dict[str, float] = {}
    link_by_id = {link[0]: link for link in links}
    x = LEFT
    for column in sorted(columns):
        members = columns[column]

        def barycentre(node_id: str) -> tuple[float, tuple[int, Any]]:
            parents = [row_of[v[0]] for v in prompt[node_id].get("inputs", {}).values()
                       if as_link(v) is not None and v[0] in row_of]
            return (sum(parents) / len(parents) if parents else 0.0, _sort_key(node_id))

        members.sort(key=barycentre)
        y = TOP
        for node_id in members:
            node = _ui_node(node_id, prompt[node_id], object_info, ui_id, in_link, out_links, link_by_id)
            if y > TOP and y + node["size"][1] > TOP + MAX_COLUMN_HEIGHT:
                x, y = x + NODE_WIDTH + COLUMN_GAP, TOP
            node["pos"] = [x, y]
            node["order"] = len(nodes)
            row_of[node_id] = y
            y += node["size"][1] + ROW_GAP
            nodes.append(node)
        x += NODE_WIDTH + COLUMN_GAP
    if loose:
        right = max(LEFT + NODE_WIDTH, x - COLUMN_GAP)
        y = max(n["pos"][1] + n["size"][1] for n in nodes) + ROW_GAP + TITLE_HEIGHT
        x = LEFT
        for node_id in loose:
            if x + LOOSE_STEP > right and x > LEFT:
                x, y = LEFT, y + TITLE_HEIGHT + ROW_GAP
            node = _ui_node(node_id, prompt[node_id], object_info, ui_id, in_link, out_links, link_by_id)
            node["pos"], node["order"], node["flags"] = [x, y], len(nodes), {"collapsed": True}
            nodes.append(node)
            x += LOOSE_STEP
    nodes.sort(key=lambda n: n["id"])
    return {
        "last_node_id": max(ui_id.values(), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [60, 110]}},  # the whole graph in view below the editor's bars
        "version": 0.4,
    }


def _ui_node(node_id: str, node: dict, object_info: dict, ui_id: dict[str, int], in_link: dict[tuple[str, str], int],
             out_links: dict[tuple[str, int], list[int]], link_by_id: dict[int, list[Any]]) -> dict[str, Any]:
    class_type = node["class_type"]
    info = object_info[class_type]
    specs = _input_specs(info)
    values = node.get("inputs", {})
    ui_inputs: list[dict[str, Any]] = []
    widgets_values: list[Any] = []
    names = _input_order(info) + [n for n in values if n not in _input_order(info) and as_link(values[n]) is not None]
    for name in names:
        kind, options = specs.get(name, ("*", {}))
        link_id = in_link.get((node_id, name))
        widget = name in specs and _is_widget(kind, options)
        if not widget and link_id is None and name not in specs:
            continue
        entry: dict[str, Any] = {"name": name, "type": _type_name(kind), "link": link_id}
        if widget:
            entry["widget"] = {"name": name}
            value = unwrap_constant(values[name]) if name in values and as_link(values[name]) is None \
                else _widget_default(kind, options)
            widgets_values.append(value)
            if _has_control(name, kind, options):
                widgets_values.append("fixed")
            if any(options.get(key) for key in UPLOAD_OPTIONS):
                widgets_values.append("image")
        if link_id is not None:
            link_by_id[link_id][4] = len(ui_inputs)
        ui_inputs.append(entry)
    outputs = []
    for slot, kind in enumerate(info.get("output") or []):
        names_out = info.get("output_name") or []
        outputs.append({
            "name": names_out[slot] if slot < len(names_out) else str(kind),
            "type": _type_name(kind),
            "links": out_links.get((node_id, slot), []),
            "slot_index": slot,
        })
    n_widgets = sum(1 for i in ui_inputs if "widget" in i)
    height = _node_height(info, len(ui_inputs), len(outputs)) if n_widgets or ui_inputs or outputs else 60
    title = (node.get("_meta") or {}).get("title") or info.get("display_name") or class_type
    return {
        "id": ui_id[node_id],
        "type": class_type,
        "title": title,
        "pos": [0, 0],
        "size": [NODE_WIDTH, height],
        "flags": {},
        "order": 0,
        "mode": 0,
        "inputs": ui_inputs,
        "outputs": outputs,
        "properties": {"Node name for S&R": class_type},
        "widgets_values": widgets_values,
    }


# ---------------------------------------------------------------- workflow files

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ObjectInfo = dict[str, Any] | Callable[[], dict[str, Any]]


class WorkflowFileError(ValueError):
    """A workflow file that cannot be read or understood; the message says what to do."""


def _object_info(object_info: ObjectInfo) -> dict[str, Any]:
    return object_info() if callable(object_info) else object_info


def _decode_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "a workflow is a JSON object saved from the editor or written in ComfyUI's API format"
        ) from exc


def workflow_from_data(data: Any, object_info: ObjectInfo, where: str) -> tuple[dict[str, Any], dict | None]:
    """(API prompt, UI workflow or None) from decoded JSON in either format."""
    if not isinstance(data, dict):
        raise WorkflowFileError(f"{where} holds a JSON {type(data).__name__}, not a workflow object")
    if is_ui_format(data):
        return ui_to_api(data, _object_info(object_info)), data
    wrapped = data.get("prompt")
    if isinstance(wrapped, dict) and "class_type" not in wrapped and set(data) <= {"prompt", "extra_data", "client_id"}:
        return workflow_from_data(data["prompt"], object_info, where)
    return data, None


def png_text_chunks(path: Path) -> dict[str, str]:
    from PIL import Image, UnidentifiedImageError  # only for PNG files: keeps the engine's import light

    try:
        with Image.open(path) as image:
            image.load()
            return {k: v for k, v in (getattr(image, "text", None) or {}).items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError) as exc:
        raise WorkflowFileError(f"cannot read PNG {path}: {exc}") from exc


def _from_png(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    chunks = png_text_chunks(path)
    ui = _decode_json(chunks["workflow"], f"the 'workflow' chunk of {path}") if "workflow" in chunks else None
    ui = ui if is_ui_format(ui) else None
    if "prompt" in chunks:
        prompt = _decode_json(chunks["prompt"], f"the 'prompt' chunk of {path}")
        if isinstance(prompt, dict) and prompt:
            return prompt, ui
    if ui is not None:
        return ui_to_api(ui, _object_info(object_info)), ui
    raise WorkflowFileError(f"{path} carries no workflow: it has no 'prompt' or 'workflow' text chunk "
                            "(only PNGs saved by SaveImage here or in ComfyUI do)")


def load_workflow(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    """(API prompt, UI workflow or None) from a .json file (API or UI format) or a .png that carries one.

    `object_info` may be a callable so that the node registry is only built when a UI workflow needs converting.
    Raises WorkflowFileError with a message that names what is wrong (for a conversion error, the node).
    """
    try:
        return _load(Path(path), object_info)
    except ConversionError as exc:
        raise WorkflowFileError(f"cannot convert the editor workflow in {path}: {exc}") from exc


def _load(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    try:
        with path.open("rb") as handle:
            is_png = handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        if is_png:
            return _from_png(path, object_info)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFileError(f"cannot read workflow file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(f"{path} is neither a JSON workflow nor a PNG that carries one") from exc
    return workflow_from_data(_decode_json(text, str(path)), object_info, str(path))
