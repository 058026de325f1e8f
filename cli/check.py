"""`latentgraph check`: validate a workflow and report every fault by node id, without running anything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latentgraph.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    WorkflowFileError,
    add_base_dir_argument,
    load_workflow_file,
    make_executor,
)
from latentgraph.engine.executor import Executor
from latentgraph.engine.workflow_format import ConversionError
from latentgraph.server.options import ServerOptions
from latentgraph.server.timings import TimingStore


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a workflow without running it",
        description="Validate a workflow: every fault is reported with its node id, class and input. "
                    "Exit code 0: valid; 2: invalid.",
    )
    parser.add_argument("workflow", type=Path,
                        help="workflow file: API or editor JSON, or a PNG that carries a workflow")
    parser.add_argument("--json", action="store_true", help="print ComfyUI's {error, node_errors} JSON instead")
    parser.add_argument("--estimate", action="store_true",
                        help="also say which nodes a run would execute and how long it should take, from the node "
                             "timings the server recorded in the base directory's database ('unknown' without "
                             "history). This process's cache is empty, so every node the outputs need counts.")
    add_base_dir_argument(parser)
    parser.set_defaults(func=check_command)


def file_error_response(exc: WorkflowFileError) -> dict[str, Any]:
    """ComfyUI's {error, node_errors} body for a file that could not be read or converted, so that `--json` always
    prints JSON: unknown node types as ComfyUI reports them (missing_node_type, every such node listed)."""
    cause = exc.__cause__
    unknown = cause.unknown if isinstance(cause, ConversionError) else []
    node_errors = {
        node_id: {"errors": [{"type": "missing_node_type",
                              "message": f"Node '{node_type}' not found. The custom node may not be installed.",
                              "details": f"Node ID '#{node_id}'",
                              "extra_info": {"node_id": node_id, "class_type": node_type}}],
                  "dependent_outputs": [], "class_type": node_type}
        for node_id, node_type in unknown
    }
    if unknown:
        error = dict(next(iter(node_errors.values()))["errors"][0])
    else:
        error = {"type": "invalid_prompt", "message": "Invalid prompt", "details": str(exc), "extra_info": {}}
    return {"error": error, "node_errors": node_errors}


def check_command(args: argparse.Namespace) -> int:
    executor = make_executor(args.base_dir)
    try:
        prompt, _ = load_workflow_file(args.workflow, executor)
    except WorkflowFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps(file_error_response(exc), indent=2))
        return EXIT_INVALID
    validation = executor.validate(prompt)
    estimate = run_estimate(executor, prompt, args.base_dir) if args.estimate and validation.ok else None
    if args.json:
        print(json.dumps(validation.as_response() | ({"estimate": estimate} if estimate else {}), indent=2))
    elif validation.ok:
        print(f"ok: {len(validation.nodes)} nodes to run for outputs {', '.join(validation.outputs)}")
        if estimate is not None:
            print(format_estimate(estimate))
    else:
        print(validation.summary())
    return EXIT_OK if validation.ok else EXIT_INVALID


def run_estimate(executor: Executor, prompt: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The executor's estimate priced from the timings in the server's database under `base_dir`."""
    store = TimingStore(ServerOptions(base_dir=base_dir).database_path)
    try:
        return executor.estimate(prompt, None, store.history)
    finally:
        store.close()


def format_estimate(estimate: dict[str, Any]) -> str:
    """One line per node that would run, then the total (a lower bound when some nodes have no history)."""
    lines = [f"estimate on {estimate['device']}: {len(estimate['run'])} node(s) would run"]
    for node in estimate["nodes"]:
        ms = node["expected_ms"]
        time = "unknown" if ms is None else f"{ms / 1000:.2f} s"
        lines.append(f"  {node['node']:>6} {node['class_type']:<28} {time:>10}  ({node['basis']}; "
                     f"{node['reason']['text']})")
    total = f"{estimate['total_ms'] / 1000:.2f} s"
    if estimate["unknown"]:
        total = f"at least {total}; {len(estimate['unknown'])} node(s) without recorded timings"
    lines.append(f"  total: {total}")
    return "\n".join(lines)
