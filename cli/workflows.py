"""`latentgraph workflows`, and what `latentgraph run` needs to run a library workflow by name with named inputs.

`run` takes a file path as before; anything that is not a file is looked up in the workflow library (the editor's
user folder, `--workflows-dir` folders, the shipped `workflows/`), optionally pinned as NAME@VERSION. `--input
NAME=VALUE` sets a declared input; errors are reported by input name and nothing runs. `run NAME --help` lists the
workflow's inputs with their types, ranges, defaults and descriptions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from latentgraph.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_base_dir_argument,
    load_workflow_file,
    make_executor,
)
from latentgraph.engine.executor import Executor
from latentgraph.engine.library import (
    Interface,
    InterfaceError,
    Library,
    Prepared,
    WorkflowInputSpec,
    WorkflowNotFound,
    describe,
    extract_interface,
    parse_text_value,
    prepare,
)
from latentgraph.engine.workflow_format import ui_to_api


class InvalidInputs(ValueError):
    """Named inputs that failed validation; `prepared` holds the errors by input name."""

    def __init__(self, prepared: Prepared) -> None:
        super().__init__(prepared.summary())
        self.prepared = prepared


def add_workflows_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workflows-dir", dest="workflows_dirs", action="append", type=Path, metavar="DIR",
        default=[Path(p) for p in os.environ.get("LATENTGRAPH_WORKFLOWS", "").split(os.pathsep) if p],
        help="another folder of saved workflows, searched before the editor's user folder and workflows/ "
             "(repeatable; default: $LATENTGRAPH_WORKFLOWS, separated by the path separator)",
    )


def make_library(executor: Executor, extra_dirs: list[Path] | None = None) -> Library:
    """The library of the executor's base directory; editor-format files are converted with its object_info."""
    object_info = cache(lambda: executor.registry.object_info(executor.env))
    return Library.for_environment(executor.env, extra_dirs or [], to_api=lambda doc: ui_to_api(doc, object_info()))


def parse_inputs(pairs: list[str], interface: Interface) -> dict[str, Any]:
    """NAME=VALUE strings to values typed by each input's declaration (text stays text); unknown names pass
    through so that `prepare` reports them with the list of known inputs."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--input {pair!r}: expected NAME=VALUE, e.g. seed=7")
        inp = interface.inputs.get(name.strip())
        values[name.strip()] = parse_text_value(inp, raw) if inp is not None else raw
    return values


def set_primitives(graph: dict[str, Any], prompt: dict[str, Any], overrides: list[str]) -> list[str]:
    """Applies to the editor graph each --set that names one of its PrimitiveNodes (by id or title; the input is
    `value` or the widget the primitive drives), which the API prompt no longer has; returns the other overrides.

    A node of the prompt with that id or title wins, so existing --set lines keep their meaning.
    """
    titles = {(v.get("_meta") or {}).get("title") for v in prompt.values() if isinstance(v, dict)}
    rest = []
    for override in overrides:
        target, sep, raw = override.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        primitive = None
        if sep and dot and node_ref not in prompt and node_ref not in titles:
            primitive = next((n for n in graph.get("nodes") or [] if isinstance(n, dict)
                              and n.get("type") == "PrimitiveNode"
                              and node_ref in (str(n.get("id")), n.get("title"))), None)
        widget = ((primitive or {}).get("outputs") or [{}])[0].get("widget") or {}
        values = (primitive or {}).get("widgets_values")
        if primitive is None or input_name not in ("value", widget.get("name")) or not isinstance(values, list):
            rest.append(override)
            continue
        try:
            values[0] = json.loads(raw)
        except json.JSONDecodeError:
            values[0] = raw
    return rest


def load_for_run(args: argparse.Namespace, executor: Executor,
                 apply_override: Callable[[dict[str, Any], str], None]) -> tuple[dict, dict | None, list[str] | None]:
    """(prompt to run, editor graph or None, output nodes or None for all) for `latentgraph run`.

    A file without `--input` loads exactly as before; a library name or any `--input` goes through the declared
    interface, so named values are checked against the widgets they set and errors name the input.
    """
    path = Path(args.workflow)
    by_name = not path.exists() and path.suffix.lower() not in (".json", ".png")
    if by_name:
        prompt, graph = copy.deepcopy(make_library(executor, args.workflows_dirs).get(str(args.workflow)).prompt), None
    else:
        prompt, graph = load_workflow_file(path, executor)
    overrides = list(args.overrides)
    if graph is not None:
        overrides = set_primitives(graph, prompt, overrides)
        if len(overrides) < len(args.overrides):
            prompt = ui_to_api(graph, executor.registry.object_info(executor.env))
    for override in overrides:
        apply_override(prompt, override)
    if not by_name and not args.inputs:
        return prompt, graph, None
    interface = extract_interface(prompt, executor.registry, executor.env)
    prepared = prepare(prompt, interface, parse_inputs(args.inputs, interface), executor.registry, executor.env)
    if not prepared.ok:
        raise InvalidInputs(prepared)
    return prepared.prompt, (graph if not args.inputs else None), interface.output_nodes()


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def input_usage(inp: WorkflowInputSpec) -> str:
    """One line of `run NAME --help`: name, type with range or choices, description, default."""
    schema = inp.schema
    kind = {"integer": "INT", "number": "FLOAT", "boolean": "BOOL"}.get(schema.get("type"), "TEXT")
    if "enum" in schema:
        kind = "CHOICE"
    head = f"  --input {inp.name}={kind}"
    details = []
    if "minimum" in schema or "maximum" in schema:
        details.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if "enum" in schema:
        choices = schema["enum"]
        details.append("one of: " + (", ".join(map(str, choices[:8])) + (", ..." if len(choices) > 8 else "")
                                     if choices else "(none installed)"))
    text = inp.description + (f" [{'; '.join(details)}]" if details else "")
    default = f" (default: {_shown(inp.default)})" if inp.default is not None else ""
    return f"{head:<36} {text}{default}"


def interface_help(ref: str, base_dir: Path, extra_dirs: list[Path]) -> str:
    """What `run NAME --help` adds to the usage: the workflow, its version, inputs and outputs."""
    executor = make_executor(base_dir)
    path = Path(ref)
    try:
        if path.exists() or path.suffix.lower() in (".json", ".png"):
            prompt, title = load_workflow_file(path, executor)[0], str(path)
        else:
            version = make_library(executor, extra_dirs).get(ref)
            prompt = version.prompt
            title = f"{version.ref}" + (f" (version {version.label})" if version.label else "")
        interface = extract_interface(prompt, executor.registry, executor.env)
    except (WorkflowNotFound, InterfaceError, ValueError, OSError) as exc:
        return f"\nworkflow {ref}: {exc}"
    lines = [f"\nworkflow {title}" + (f": {interface.description}" if interface.description else "")]
    if interface.inputs:
        lines += ["inputs:", *(input_usage(inp) for inp in interface.inputs.values())]
    else:
        lines.append("inputs: none declared (use --set NODE.INPUT=VALUE)")
    if interface.outputs:
        lines += ["outputs:", *(f"  {o.name} ({o.type})  {o.description}" for o in interface.outputs.values())]
    return "\n".join(lines)


class WorkflowHelp(argparse.Action):
    """-h/--help of `run`: the usual help, plus the inputs of the workflow named before it (`run NAME --help`)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help, and the inputs of WORKFLOW when it is given before --help")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.print_help()
        ref = getattr(namespace, "workflow", None)
        if ref:
            base_dir = getattr(namespace, "base_dir", None) or Path(os.environ.get("LATENTGRAPH_BASE_DIR", "."))
            print(interface_help(str(ref), base_dir, getattr(namespace, "workflows_dirs", None) or []))
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workflows", help="list the workflow library: names, versions, inputs",
        description="List the saved workflows that `latentgraph run NAME` finds: --workflows-dir folders, the "
                    "editor's user folder (user/default/workflows) and the shipped workflows/, with each one's "
                    "exact version (content hash), human version and declared inputs.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these workflows (also lists their versions)")
    parser.add_argument("--json", action="store_true", help="print the JSON that GET /api/workflows returns")
    add_base_dir_argument(parser)
    add_workflows_dir_argument(parser)
    parser.set_defaults(func=workflows_command)


def workflows_command(args: argparse.Namespace) -> int:
    executor = make_executor(args.base_dir)
    library = make_library(executor, args.workflows_dirs)
    current = library.scan()
    unknown = [n for n in args.names if n not in current]
    if unknown:
        print(f"error: no workflow named {', '.join(unknown)} (workflows: {', '.join(sorted(current))})",
              file=sys.stderr)
        return EXIT_INVALID
    entries = []
    for name in args.names or sorted(current):
        version = current[name]
        try:
            interface, error = extract_interface(version.prompt, executor.registry, executor.env), None
        except InterfaceError as exc:
            interface, error = None, str(exc)
        entries.append(describe(version, interface, error, library.versions(name) if args.names else ()))
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    for entry in entries:
        label = f" (version {entry['label']})" if entry["label"] else ""
        print(f"{entry['name']}@{entry['version']}{label}  {entry['description']}")
        if "error" in entry:
            print(f"    error: {entry['error']}")
        inputs = entry.get("inputs", {}).get("properties", {})
        if inputs:
            print("    inputs: " + ", ".join(f"{n}={_shown(s.get('default'), 24)}" for n, s in inputs.items()))
        for old in entry.get("versions", []):
            print(f"    recorded version {old['version']}" + (f" ({old['label']})" if old["label"] else ""))
    for name, problem in sorted(library.errors.items()):
        print(f"skipped {name}: {problem}", file=sys.stderr)
    return EXIT_OK
