"""Saved workflows as typed functions: a library of named, versioned workflows with declared inputs and outputs.

A workflow declares its interface with `WorkflowInput`, `WorkflowOutput` and `WorkflowInfo` nodes (see
`latentgraph.nodes.workflow_nodes`). Those nodes point at widgets and output nodes by id or title instead of being
wired in, so a workflow with declarations runs exactly as it did without them; this module reads them and derives:

- each input's type and constraints from the declaration of the node input it sets (`KSampler.seed` is an INT with
  KSampler's range, `CheckpointLoaderSimple.ckpt_name` an enum of the installed checkpoints), as JSON Schema;
- binding: named values written into the widgets they set, giving an ordinary API-format prompt, which is then
  validated by the one validator, with every error that concerns a named input reported under that input's name;
- a library over folders (the shipped `workflows/`, the editor's user folder, folders the user names), where a
  workflow's stable name is its path without `.json` and its exact version is the hash of its API prompt. Every
  version the library sees is recorded in a content-addressed store, so a caller may pin `NAME@VERSION` (a hash
  prefix or the human version of `WorkflowInfo`) and keep getting the old workflow after the file has changed.

Nothing here knows about torch or diffusion: types and constraints come from the node declarations in the registry.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgraph.engine.context import Environment
from latentgraph.engine.node import InputSpec
from latentgraph.engine.registry import Registry
from latentgraph.engine.validate import Validation, validate
from latentgraph.engine.workflow import as_link, unwrap_constant

INPUT_CLASS, OUTPUT_CLASS, INFO_CLASS = "WorkflowInput", "WorkflowOutput", "WorkflowInfo"
DECLARATION_CLASSES = (INPUT_CLASS, OUTPUT_CLASS, INFO_CLASS)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "workflows"
USER_WORKFLOWS = Path("default") / "workflows"  # under the base directory's user/, where the editor saves
VERSION_STORE = Path("default") / "workflow_versions"
HASH_SHOWN = 12
MIN_HASH_PREFIX = 6

ToApi = Callable[[dict[str, Any]], dict[str, Any]]


class InterfaceError(ValueError):
    """The declarations of a workflow are inconsistent: each problem names the declaring node."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class WorkflowNotFound(LookupError):
    """No workflow (or no version of it) answers to the requested name."""


@dataclass(frozen=True)
class Target:
    """One widget an input sets: node id and input name."""

    node: str
    input: str


@dataclass(frozen=True)
class WorkflowInputSpec:
    """A declared input: its JSON Schema already carries type, range, choices, default and description."""

    name: str
    description: str
    type: str
    default: Any
    targets: tuple[Target, ...]
    schema: dict[str, Any]
    declared_by: str


@dataclass(frozen=True)
class WorkflowOutputSpec:
    """A declared output: the files of an output node (`index` None) or output `index` of an ordinary node."""

    name: str
    description: str
    node: str
    index: int | None
    type: str
    declared_by: str


@dataclass(frozen=True)
class Interface:
    inputs: dict[str, WorkflowInputSpec] = field(default_factory=dict)
    outputs: dict[str, WorkflowOutputSpec] = field(default_factory=dict)
    version: str = ""
    description: str = ""

    def input_schema(self) -> dict[str, Any]:
        """A JSON Schema object of the named inputs; every input has a default, so none is required."""
        return {"type": "object", "additionalProperties": False,
                "properties": {name: inp.schema for name, inp in self.inputs.items()}}

    def output_schema(self) -> dict[str, Any]:
        properties = {}
        for name, out in self.outputs.items():
            properties[name] = {"type": "array", "description": out.description, "x-type": out.type,
                                "items": {"type": "object", "properties": {
                                    "url": {"type": "string"}, "filename": {"type": "string"},
                                    "subfolder": {"type": "string"}, "type": {"type": "string"}}}}
        return {"type": "object", "properties": properties}

    def output_nodes(self) -> list[str] | None:
        """The output nodes to run for the declared outputs; None (every output node) when none is declared."""
        nodes = [out.node for out in self.outputs.values() if out.index is None]
        return sorted(set(nodes)) if nodes else None


def _title(node: dict[str, Any]) -> str | None:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def find_node(prompt: dict[str, Any], ref: str) -> str:
    """The id of the node named `ref`: a node id, else the one node with that title (as `--set` finds nodes)."""
    if ref in prompt:
        return ref
    matches = [node_id for node_id, node in prompt.items() if isinstance(node, dict) and _title(node) == ref]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"several nodes are titled {ref!r} ({', '.join(sorted(matches))}); use a node id")
    raise KeyError(f"no node with id or title {ref!r}")


def _split_ref(prompt: dict[str, Any], ref: str) -> tuple[str, str]:
    node_ref, dot, name = ref.strip().rpartition(".")
    if not dot or not node_ref or not name:
        raise KeyError(f"{ref!r} is not NODE.INPUT (NODE an id or title)")
    return find_node(prompt, node_ref.strip()), name.strip()


def _constant(inputs: dict[str, Any], spec: InputSpec) -> Any:
    if spec.name in inputs:
        return unwrap_constant(inputs[spec.name])
    return spec.default if spec.has_default else None


def constant_schema(spec: InputSpec, env: Environment) -> dict[str, Any]:
    """JSON Schema of a widget input, from its declaration: pydantic's schema plus the live list of choices."""
    schema = spec.adapter.json_schema() if spec.adapter is not None else {}
    schema = {k: v for k, v in schema.items() if k not in ("title", "description", "default")}
    choices = spec.choices(env)
    if choices is not None:
        schema["enum"] = list(choices)
        schema.setdefault("type", "string")
    return schema


def _merge(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a value valid for both inputs, or None when their types differ."""
    if first.get("type") != other.get("type"):
        return None
    merged = dict(first)
    if "minimum" in other:
        merged["minimum"] = max(merged.get("minimum", other["minimum"]), other["minimum"])
    if "maximum" in other:
        merged["maximum"] = min(merged.get("maximum", other["maximum"]), other["maximum"])
    if "enum" in other:
        merged["enum"] = [v for v in merged.get("enum", other["enum"]) if v in other["enum"]]
    return merged


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def extract_interface(prompt: dict[str, Any], registry: Registry, env: Environment) -> Interface:
    """Reads the declaration nodes of an API-format workflow; raises InterfaceError listing every problem."""
    problems: list[str] = []
    inputs: dict[str, WorkflowInputSpec] = {}
    outputs: dict[str, WorkflowOutputSpec] = {}
    version = description = ""
    for node_id in sorted(prompt, key=lambda k: (len(k), k)):
        node = prompt[node_id]
        if not isinstance(node, dict) or node.get("class_type") not in DECLARATION_CLASSES:
            continue
        values = {k: unwrap_constant(v) for k, v in (node.get("inputs") or {}).items()}
        where = f"node {node_id} ({node['class_type']})"
        if node["class_type"] == INFO_CLASS:
            version, description = _text(values.get("version")), _text(values.get("description"))
            continue
        name = _text(values.get("name"))
        if not name.isidentifier():
            problems.append(f"{where}: name {values.get('name')!r} must be a word of letters, digits and _")
            continue
        if name in (inputs if node["class_type"] == INPUT_CLASS else outputs):
            problems.append(f"{where}: the name {name!r} is declared twice")
            continue
        try:
            if node["class_type"] == INPUT_CLASS:
                inputs[name] = _input_spec(prompt, registry, env, node_id, name, values)
            else:
                outputs[name] = _output_spec(prompt, registry, node_id, name, values)
        except KeyError as exc:
            problems.append(f"{where}: {exc.args[0]}")
    if problems:
        raise InterfaceError(problems)
    return Interface(inputs, outputs, version, description)


def _input_spec(prompt: dict[str, Any], registry: Registry, env: Environment, node_id: str, name: str,
                values: dict[str, Any]) -> WorkflowInputSpec:
    refs = [r for r in str(values.get("target") or "").split(",") if r.strip()]
    if not refs:
        raise KeyError("target is empty: name the widget it sets, as NODE.INPUT")
    targets: list[Target] = []
    schema: dict[str, Any] | None = None
    type_name, default = "", None
    for ref in refs:
        target_id, input_name = _split_ref(prompt, ref)
        target = prompt[target_id]
        class_type = target.get("class_type") if isinstance(target, dict) else None
        if not isinstance(class_type, str) or class_type in DECLARATION_CLASSES or class_type not in registry:
            raise KeyError(f"target {ref.strip()!r}: node {target_id} has unknown type {class_type!r}")
        spec = registry.spec(class_type).inputs.get(input_name)
        if spec is None or spec.hidden:
            raise KeyError(f"target {ref.strip()!r}: {class_type} has no input {input_name!r}")
        if spec.socket:
            raise KeyError(f"target {ref.strip()!r}: {class_type}.{input_name} is a socket ({spec.type}), not a "
                           "widget; declare an input on the widget that feeds it")
        link = as_link((target.get("inputs") or {}).get(input_name))
        if link is not None:
            raise KeyError(f"target {ref.strip()!r} is linked from node {link.node}; point the input at the "
                           "widget of that node instead")
        one = constant_schema(spec, env)
        if schema is None:
            schema, type_name, default = one, spec.type, _constant(target.get("inputs") or {}, spec)
        else:
            merged = _merge(schema, one)
            if merged is None:
                raise KeyError(f"target {ref.strip()!r} is a {spec.type}, unlike the first target ({type_name})")
            schema = merged
        targets.append(Target(target_id, input_name))
    assert schema is not None
    description = _text(values.get("description"))
    schema = {"title": name, **({"description": description} if description else {}), **schema}
    if default is not None and ("enum" not in schema or default in schema["enum"]):
        schema["default"] = default
    elif default is not None:  # e.g. a checkpoint that is not installed here: not a valid value, but say what it is
        schema["x-workflow-default"] = default
    return WorkflowInputSpec(name, description, type_name, default, tuple(targets), schema, node_id)


def _output_spec(prompt: dict[str, Any], registry: Registry, node_id: str, name: str,
                 values: dict[str, Any]) -> WorkflowOutputSpec:
    ref = _text(values.get("source"))
    if not ref:
        raise KeyError("source is empty: name an output node, or NODE.OUTPUT")
    index: int | None
    try:
        source_id, out_name = find_node(prompt, ref), ""
    except KeyError:
        source_id, out_name = _split_ref(prompt, ref)
    class_type = prompt[source_id].get("class_type")
    cls = registry.get(class_type) if class_type not in DECLARATION_CLASSES else None
    if cls is None:
        raise KeyError(f"source {ref!r}: node {source_id} has unknown type {class_type!r}")
    spec = registry.spec(class_type)
    if not out_name and cls.OUTPUT_NODE:
        index, type_name = None, "*"
        for inp in spec.inputs.values():  # an output node shows what feeds its first socket: IMAGE for SaveImage
            link = as_link((prompt[source_id].get("inputs") or {}).get(inp.name))
            if inp.socket and link is not None:
                feeder = prompt.get(link.node, {}).get("class_type")
                if feeder in registry and 0 <= link.index < len(registry.spec(feeder).output_types):
                    type_name = registry.spec(feeder).output_types[link.index]
                break
    else:
        names, types = spec.output_names, spec.output_types
        if not out_name:
            index = 0
        elif out_name.isdigit():
            index = int(out_name)
        elif out_name in names:
            index = names.index(out_name)
        else:
            raise KeyError(f"source {ref!r}: {class_type} has no output {out_name!r} (outputs: {list(names)})")
        if not 0 <= index < len(types):
            raise KeyError(f"source {ref!r}: {class_type} has {len(types)} output(s)")
        type_name = types[index]
    return WorkflowOutputSpec(name, _text(values.get("description")), source_id, index, type_name, node_id)


def bind(prompt: dict[str, Any], interface: Interface, values: dict[str, Any]) -> dict[str, Any]:
    """The prompt with each given value written into the widgets its input sets; inputs not given keep the
    workflow's own values, so binding nothing gives back the workflow unchanged."""
    bound = copy.deepcopy(prompt)
    for name, value in values.items():
        inp = interface.inputs.get(name)
        if inp is None:
            continue
        for target in inp.targets:
            bound[target.node].setdefault("inputs", {})[target.input] = (
                {"__value__": value} if isinstance(value, list) else value)
    return bound


@dataclass
class Prepared:
    """A workflow with inputs bound and validated; when not `ok`, `input_errors` are keyed by input name and
    `node_errors` hold what no input explains (a missing model file, a broken link)."""

    prompt: dict[str, Any]
    validation: Validation
    input_errors: dict[str, list[dict[str, Any]]]
    node_errors: dict[str, dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.validation.ok and not self.input_errors

    def as_response(self) -> dict[str, Any]:
        """ComfyUI's error body, with `input_errors` by input name next to the remaining `node_errors`."""
        if self.input_errors:
            names = ", ".join(sorted(self.input_errors))
            error = {"type": "invalid_inputs", "message": "Workflow inputs failed validation",
                     "details": f"invalid input(s): {names}", "extra_info": {}}
        else:
            error = self.validation.error or {}
        return {"error": error, "input_errors": self.input_errors, "node_errors": self.node_errors}

    def summary(self) -> str:
        lines = [self.as_response()["error"].get("message", "invalid")]
        for name, errors in self.input_errors.items():
            for err in errors:
                detail = f" [{err['details']}]" if err.get("details") else ""
                lines.append(f"  input '{name}': {err['message']}{detail} ({err['type']})")
        if self.node_errors:
            rest = Validation(ok=False, error={"message": "other problems", "details": ""},
                              node_errors=self.node_errors)
            lines.extend(rest.summary().splitlines()[1:])
        return "\n".join(lines)


def prepare(prompt: dict[str, Any], interface: Interface, values: dict[str, Any], registry: Registry,
            env: Environment) -> Prepared:
    """Binds named values and validates the result; the validator's errors on a bound widget become errors of the
    input that set it, so a caller sees `seed: Value ... bigger than max`, not node ids it never chose."""
    input_errors: dict[str, list[dict[str, Any]]] = {}
    for name in values:
        if name not in interface.inputs:
            known = ", ".join(interface.inputs) or "none"
            input_errors[name] = [{"type": "unknown_input", "message": "Unknown input",
                                   "details": f"{name!r} is not an input of this workflow (inputs: {known})",
                                   "extra_info": {"input_name": name}}]
    bound = bind(prompt, interface, values)
    validation = validate(bound, registry, env, interface.output_nodes())
    owner = {(t.node, t.input): name for name, inp in interface.inputs.items() if name in values
             for t in inp.targets}
    node_errors: dict[str, dict[str, Any]] = {}
    for node_id, entry in validation.node_errors.items():
        rest: list[dict[str, Any]] = []
        for err in entry["errors"]:
            node_input = (err.get("extra_info") or {}).get("input_name")
            owning = owner.get((node_id, node_input)) if isinstance(node_input, str) else None
            if owning is None or node_input is None:
                rest.append(err)
                continue
            name = owning
            extra = {**err.get("extra_info", {}), "input_name": name, "node_id": node_id, "node_input": node_input}
            details = str(err.get("details", ""))
            if node_input and details.startswith(node_input):
                details = name + details[len(node_input):]
            errors = input_errors.setdefault(name, [])
            if not any(e["type"] == err["type"] and e["message"] == err["message"] for e in errors):
                errors.append({**err, "details": details, "extra_info": extra})
        if rest:
            node_errors[node_id] = {**entry, "errors": rest}
    return Prepared(bound, validation, input_errors, node_errors)


def parse_text_value(inp: WorkflowInputSpec, text: str) -> Any:
    """A value typed on a command line: text for text and choice inputs, JSON (else text) for the others, so that
    `--input prompt=7` is the text "7" while `--input seed=7` is the number 7."""
    if inp.schema.get("type") == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def describe(version: WorkflowVersion, interface: Interface | None, error: str | None = None,
             versions: Sequence[WorkflowVersion] = ()) -> dict[str, Any]:
    """The JSON description of a library workflow that `GET /api/workflows` and `latentgraph workflows --json`
    give: name, exact and human version, description, JSON Schemas of inputs and outputs, recorded versions."""
    entry: dict[str, Any] = {"name": version.name, "version": version.version, "hash": version.hash,
                             "label": version.label, "description": version.description}
    if interface is not None:
        entry["inputs"] = interface.input_schema()
        entry["outputs"] = interface.output_schema()
    if error is not None:
        entry["error"] = error
    if versions:
        entry["versions"] = [{"version": v.version, "label": v.label, "recorded_at": v.recorded_at}
                             for v in versions]
    return entry


# -- workflows used as nodes -----------------------------------------------------------------------------------

WORKFLOW_NODE_PREFIX = "Workflow: "
MAX_NESTING = 8


class ExpansionError(ValueError):
    """A workflow node that cannot be expanded: unknown workflow, a workflow that contains itself, bad declarations."""

    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(f"node {node_id}: {message}")
        self.node_id = node_id


def workflow_node_name(name: str) -> str:
    """The class_type of the node that stands for library workflow `name` (pinned as NAME@VERSION if wanted)."""
    return WORKFLOW_NODE_PREFIX + name


def _is_workflow_node(node: Any) -> bool:
    return isinstance(node, dict) and str(node.get("class_type", "")).startswith(WORKFLOW_NODE_PREFIX)


def expand_workflow_nodes(data: Any, registry: Registry, env: Environment, library: Library | None = None) -> Any:
    """The prompt with every `Workflow: NAME` node replaced by that workflow's nodes, before validation.

    Inner nodes get ids `OUTER:INNER` (as the editor's subgraphs do); the outer node's constants and links are
    written into the widgets its inputs declare, and links from its outputs go to what feeds the inner workflow's
    declared outputs. Inner output nodes (its SaveImage) and declarations are dropped: the outer workflow decides
    what to save. Nothing else changes, so every inner node has the content key it has when the inner workflow runs
    alone, and the cache is shared. A prompt without workflow nodes is returned as it is, without touching disk.
    """
    if not isinstance(data, dict) or not any(_is_workflow_node(node) for node in data.values()):
        return data
    return _expand(data, registry, env, library or Library.for_environment(env), ())


def _prefixed(node: dict[str, Any], prefix: str) -> dict[str, Any]:
    inputs = {}
    for key, value in (node.get("inputs") or {}).items():
        link = as_link(value)
        inputs[key] = [prefix + link.node, link.index] if link is not None else copy.deepcopy(value)
    return {**node, "inputs": inputs}


def _output_source(prompt: dict[str, Any], out: WorkflowOutputSpec, registry: Registry) -> tuple[str, int]:
    if out.index is not None:
        return out.node, out.index
    node = prompt[out.node]
    for inp in registry.spec(node["class_type"]).inputs.values():
        link = as_link((node.get("inputs") or {}).get(inp.name))
        if inp.socket and link is not None:
            return link.node, link.index
    raise KeyError(f"output {out.name!r}: node {out.node} has no linked input to take the value from")


OUTER_LINK = "__outer_link__"  # a link of the caller's scope, carried through an inner workflow until unwrapped


def _unwrap_outer(node: dict[str, Any], depth: int) -> dict[str, Any]:
    inputs = node.get("inputs") or {}
    if not any(isinstance(v, dict) and v.get("depth") == depth and OUTER_LINK in v for v in inputs.values()):
        return node
    return {**node, "inputs": {k: v[OUTER_LINK] if isinstance(v, dict) and v.get("depth") == depth
                               and OUTER_LINK in v else v for k, v in inputs.items()}}


def _expand(prompt: dict[str, Any], registry: Registry, env: Environment, library: Library,
            stack: tuple[str, ...]) -> dict[str, Any]:
    """One level: each workflow node becomes its (recursively expanded) nodes. Values of the node's inputs are
    written into the inner workflow before its own workflow nodes expand, so an input may set a widget of a nested
    workflow node; links among them are wrapped (tagged with this depth) so that inner levels carry them untouched
    and only this level, once the inner ids are prefixed, turns them back into links of the caller's scope."""
    expanded: dict[str, Any] = {}
    sources: dict[str, list[tuple[str, int]]] = {}  # workflow node -> what its outputs stand for
    depth = len(stack)
    for node_id, node in prompt.items():
        if not _is_workflow_node(node):
            expanded[node_id] = node
            continue
        ref = node["class_type"][len(WORKFLOW_NODE_PREFIX):].strip()
        if ref.partition("@")[0] in {s.partition("@")[0] for s in stack}:
            raise ExpansionError(node_id, f"workflow {ref!r} contains itself ({' > '.join((*stack, ref))})")
        if depth >= MAX_NESTING:
            raise ExpansionError(node_id, f"workflows are nested more than {MAX_NESTING} deep")
        try:
            version = library.get(ref)
            interface = extract_interface(version.prompt, registry, env)
            body = copy.deepcopy(version.prompt)
            for name, value in (node.get("inputs") or {}).items():
                inp = interface.inputs.get(name)
                for target in inp.targets if inp is not None else ():
                    body[target.node].setdefault("inputs", {})[target.input] = (
                        {OUTER_LINK: value, "depth": depth} if as_link(value) is not None else copy.deepcopy(value))
            inner = _expand(body, registry, env, library, (*stack, ref))
            prefix = f"{node_id}:"
            kept = {prefix + inner_id: _unwrap_outer(_prefixed(inner_node, prefix), depth)
                    for inner_id, inner_node in inner.items()
                    if inner_node.get("class_type") not in DECLARATION_CLASSES
                    and not getattr(registry.get(inner_node.get("class_type")), "OUTPUT_NODE", False)}
            sources[node_id] = []
            for out in interface.outputs.values():
                source, index = _output_source(inner, out, registry)
                sources[node_id].append((prefix + source, index))
        except (WorkflowNotFound, InterfaceError, KeyError) as exc:
            raise ExpansionError(node_id, str(exc.args[0] if exc.args else exc)) from exc
        expanded.update(kept)
    for node_id, node in expanded.items():  # links to a workflow node go to what its outputs stand for
        for key, value in (node.get("inputs") or {}).items():
            link = as_link(value)
            if link is not None and link.node in sources:
                outs = sources[link.node]
                if not 0 <= link.index < len(outs):
                    raise ExpansionError(node_id, f"input {key!r} is linked to output {link.index} of workflow node "
                                                  f"{link.node}, which has {len(outs)} output(s)")
                expanded[node_id] = node = {**node, "inputs": {**node["inputs"], key: list(outs[link.index])}}
    return expanded


# -- the library ---------------------------------------------------------------------------------------------------


def content_hash(prompt: dict[str, Any]) -> str:
    """The exact version of a workflow: SHA-256 of its API prompt as canonical JSON (key order and spacing free)."""
    canonical = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class WorkflowVersion:
    """One immutable version of a named workflow."""

    name: str
    hash: str
    prompt: dict[str, Any]
    label: str = ""  # the human version from WorkflowInfo, if any
    description: str = ""
    path: Path | None = None  # the file it was read from; None for a version only in the store
    recorded_at: float = 0.0

    @property
    def version(self) -> str:
        return self.hash[:HASH_SHOWN]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _declared(prompt: dict[str, Any], key: str) -> str:
    for node in prompt.values():
        if isinstance(node, dict) and node.get("class_type") == INFO_CLASS:
            return _text(unwrap_constant((node.get("inputs") or {}).get(key)))
    return ""


def _looks_like_ui(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("nodes"), list)


class Library:
    """Workflows found in folders, by stable name; every version seen is kept in `store` for pinning.

    Folders are searched in order and the first file with a name wins, so a user's folder can override a shipped
    workflow of the same name. Files that cannot be read are skipped and listed in `errors`.
    """

    def __init__(self, folders: Sequence[Path], store: Path | None = None, to_api: ToApi | None = None) -> None:
        self.folders = [Path(f) for f in folders]
        self.store = Path(store) if store is not None else None
        self.to_api = to_api
        self.errors: dict[str, str] = {}

    @classmethod
    def for_environment(cls, env: Environment, extra_folders: Iterable[Path] = (),
                        to_api: ToApi | None = None) -> Library:
        """The standard library of a base directory: extra folders, the editor's user folder, then `workflows/`."""
        user = env.folders.user_dir
        return cls([*extra_folders, user / USER_WORKFLOWS, SHIPPED_DIR], user / VERSION_STORE, to_api)

    def _read(self, path: Path) -> dict[str, Any]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if _looks_like_ui(doc):
            if self.to_api is None:
                raise ValueError("an editor-format workflow, and no converter was given")
            doc = self.to_api(doc)
        if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) and "class_type" in v
                                                           for v in doc.values()):
            raise ValueError("not an API-format workflow")
        return doc

    def scan(self) -> dict[str, WorkflowVersion]:
        """The current version of every workflow, by name; each is recorded in the store."""
        found: dict[str, WorkflowVersion] = {}
        self.errors = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*.json")):
                name = path.relative_to(folder).with_suffix("").as_posix()
                if name in found or any(part.startswith(".") for part in Path(name).parts) or "@" in name:
                    continue
                try:
                    prompt = self._read(path)
                except (OSError, ValueError) as exc:
                    self.errors[name] = f"{path}: {exc}"
                    continue
                version = WorkflowVersion(name, content_hash(prompt), prompt, _declared(prompt, "version"),
                                          _declared(prompt, "description"), path, path.stat().st_mtime)
                found[name] = version
                self._record(version)
        return found

    def _store_dir(self, name: str) -> Path | None:
        return None if self.store is None else self.store.joinpath(*name.split("/"))

    def _record(self, version: WorkflowVersion) -> None:
        folder = self._store_dir(version.name)
        if folder is None:
            return
        path = folder / f"{version.hash}.json"
        if path.exists():
            return
        folder.mkdir(parents=True, exist_ok=True)
        record = {"name": version.name, "hash": version.hash, "label": version.label,
                  "description": version.description, "recorded_at": time.time(), "prompt": version.prompt}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def versions(self, name: str) -> list[WorkflowVersion]:
        """Every recorded version of `name`, oldest first."""
        folder = self._store_dir(name)
        if folder is None or not folder.is_dir():
            return []
        found = []
        for path in folder.glob("*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                found.append(WorkflowVersion(name, record["hash"], record["prompt"], record.get("label", ""),
                                             record.get("description", ""), None, record.get("recorded_at", 0.0)))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(found, key=lambda v: (v.recorded_at, v.hash))

    def get(self, ref: str) -> WorkflowVersion:
        """`NAME` (the current version) or `NAME@VERSION`, VERSION a human version or a hash prefix."""
        name, _, pin = ref.partition("@")
        current = self.scan().get(name)
        if not pin:
            if current is None:
                raise WorkflowNotFound(self._not_found(name))
            return current
        candidates = self.versions(name) + ([current] if current is not None else [])
        if not candidates:
            raise WorkflowNotFound(self._not_found(name))
        labelled = [v for v in candidates if v.label == pin]
        if labelled:
            return labelled[-1]
        by_hash = {v.hash: v for v in candidates if len(pin) >= MIN_HASH_PREFIX and v.hash.startswith(pin.lower())}
        if len(by_hash) == 1:
            return next(iter(by_hash.values()))
        known = ", ".join(dict.fromkeys(v.label or v.version for v in reversed(candidates)))
        problem = "is ambiguous" if by_hash else "is not a known version"
        raise WorkflowNotFound(f"{pin!r} {problem} of workflow {name!r} (versions: {known})")

    def _not_found(self, name: str) -> str:
        if name in self.errors:
            return f"workflow {name!r} cannot be read: {self.errors[name]}"
        names = ", ".join(sorted(self.scan())) or "none"
        return f"no workflow named {name!r} (workflows: {names})"


__all__ = [
    "Interface", "InterfaceError", "Library", "Prepared", "Target", "WorkflowInputSpec", "WorkflowNotFound",
    "WorkflowOutputSpec", "WorkflowVersion", "bind", "content_hash", "describe", "expand_workflow_nodes",
    "extract_interface", "prepare", "workflow_node_name",
]
