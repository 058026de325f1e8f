"""`latentgraph run`: execute a workflow headless, with progress bars, and print the files it wrote."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latentgraph.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    WorkflowFileError,
    add_base_dir_argument,
    add_compile_argument,
    add_threads_argument,
    apply_compile,
    apply_threads,
    make_executor,
)
from latentgraph.cli.workflows import InvalidInputs, WorkflowHelp, add_workflows_dir_argument, load_for_run
from latentgraph.engine.executor import Executor
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.engine.workflow_format import api_to_ui
from latentgraph.nodes import provenance
from tqdm import tqdm


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a workflow and print the files it wrote",
        description="Run a workflow headless. Exit code 0: success; 1: the run failed; 2: the workflow is invalid "
                    "(every fault is printed, nothing runs).",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=WorkflowHelp)
    parser.add_argument("workflow", type=Path,
                        help="workflow file (API or editor JSON, or a PNG that carries a workflow), or the NAME of a "
                             "library workflow (see 'latentgraph workflows'), optionally pinned as NAME@VERSION")
    parser.add_argument(
        "--input", dest="inputs", action="append", default=[], metavar="NAME=VALUE",
        help="set a declared input of the workflow by name (e.g. --input seed=7 --input 'prompt=a red circle'); "
             "'latentgraph run WORKFLOW --help' lists them; repeatable",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
        help="override an input before running; NODE is a node id or title, VALUE is JSON or plain text "
             "(e.g. --set 3.seed=42 --set 'Positive.text=a red circle'); repeatable",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--strict", action="store_true",
                        help="when re-running a PNG: refuse (exit 2) if a model file's hash or the software/device "
                             "differs from what the image records, instead of warning")
    add_base_dir_argument(parser)
    add_threads_argument(parser)
    add_compile_argument(parser)
    add_workflows_dir_argument(parser)
    parser.set_defaults(func=run_command)


def apply_override(prompt: dict[str, Any], override: str) -> None:
    """Sets one input from a NODE.INPUT=VALUE string; the node may be named by id or by its title."""
    target, sep, raw = override.partition("=")
    node_ref, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_ref or not input_name:
        raise ValueError(f"--set {override!r}: expected NODE.INPUT=VALUE, e.g. 3.seed=42")
    node_id = node_ref if node_ref in prompt else next(
        (k for k, v in prompt.items() if isinstance(v, dict) and (v.get("_meta") or {}).get("title") == node_ref),
        None,
    )
    if node_id is None:
        raise ValueError(f"--set {override!r}: no node with id or title {node_ref!r} in the workflow")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    prompt[node_id].setdefault("inputs", {})[input_name] = value


class ProgressBars:
    """Turns engine events into a bar over nodes and a bar over the steps of the running node."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.nodes = tqdm(total=total, desc="nodes", unit="node", disable=not enabled, file=sys.stderr)
        self.steps: tqdm | None = None
        self.current: str | None = None
        self.class_of: dict[str, str] = {}

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "execution_cached":
            self.nodes.update(len(data["nodes"]))
        elif event == "executing":
            self._close_steps()
            if self.current is not None:
                self.nodes.update(1)
            self.current = data["node"]
            if self.current is not None:
                self.nodes.set_postfix_str(f"{self.current} {self.class_of.get(self.current, '')}")
        elif event == "progress":
            if self.steps is None or self.steps.total != data["max"]:
                self._close_steps()
                self.steps = tqdm(total=data["max"], desc=f"  node {data['node']}", unit="step", leave=False,
                                  disable=not self.enabled, file=sys.stderr)
            self.steps.update(data["value"] - self.steps.n)
        elif event == "executed":
            self._close_steps()

    def _close_steps(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def close(self) -> None:
        self._close_steps()
        self.nodes.close()


def check_reproduction(args: argparse.Namespace, executor: Executor, prompt: dict[str, Any]) -> bool:
    """For a PNG that records its models and environment: find renamed models by hash, then warn about (or, with
    --strict, refuse) every difference that may change the pixels. False when the run must not go ahead."""
    recorded = provenance.read_record(args.workflow) if args.workflow.suffix.lower() == ".png" else None
    if recorded is None:
        return True
    for change in provenance.relink_renamed(executor.env, recorded, prompt):
        print(f"note: model found by hash: {change}", file=sys.stderr)
    differences = provenance.compare(executor.env, recorded, prompt)
    label = "error" if args.strict else "warning"
    for difference in differences:
        print(f"{label}: {difference}", file=sys.stderr)
    if differences and args.strict:
        print("error: --strict: nothing was run; the image may not be reproduced here", file=sys.stderr)
        return False
    if differences:
        print("warning: the result may differ from the image (use --strict to refuse)", file=sys.stderr)
    return True


def run_command(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    apply_compile(args.compile)
    executor = make_executor(args.base_dir)
    try:
        prompt, graph, outputs = load_for_run(args, executor, apply_override)
    except InvalidInputs as exc:
        print(f"error: the workflow's inputs are invalid, nothing was run\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    except (WorkflowFileError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not check_reproduction(args, executor, prompt):
        return EXIT_INVALID
    validation = executor.validate(prompt, outputs)
    if not validation.ok:
        print(f"error: the workflow is invalid, nothing was run\n{validation.summary()}", file=sys.stderr)
        return EXIT_INVALID
    bars = ProgressBars(len(validation.nodes), enabled=not args.quiet)
    bars.class_of = {node_id: node.class_type for node_id, node in validation.prompt.items()}
    if graph is None or args.overrides:
        graph = api_to_ui(prompt, executor.registry.object_info(executor.env))
    try:
        result = executor.run(prompt, outputs=outputs, sink=bars, extra_data={"extra_pnginfo": {"workflow": graph}})
    except InvalidPrompt as exc:
        print(f"error: the workflow is invalid, nothing was run\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        bars.close()
    if result.status != "success":
        error = result.error or {}
        print(f"error: node {error.get('node_id')} ({error.get('node_type')}) failed: "
              f"{error.get('exception_message', result.status)}", file=sys.stderr)
        return EXIT_FAILED
    folders = executor.env.folders
    roots = {"output": folders.output_dir, "temp": folders.temp_dir, "input": folders.input_dir}
    for ui in result.outputs.values():
        for image in ui.get("images", []):
            path = roots[image["type"]] / image["subfolder"] / image["filename"]
            print(path)
    return EXIT_OK
