"""`latentgraph convert`: turn an editor (UI-format) workflow, or a PNG that carries one, into API format."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from latentgraph.cli.common import EXIT_INVALID, EXIT_OK
from latentgraph.engine.workflow_format import api_to_ui, load_workflow
from latentgraph.nodes import load_registry, make_environment


def conversion_object_info() -> dict[str, Any]:
    """object_info of every installed node, for converting UI workflows (only types and input order matter)."""
    with tempfile.TemporaryDirectory(prefix="latentgraph-convert-") as scratch:
        return load_registry().object_info(make_environment(Path(scratch)))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a UI-format workflow or a PNG to API format (or back, with --to ui)",
        description="Convert a workflow saved by the editor (UI format), or the workflow inside a PNG, to API format "
                    "(what `run`, `check` and POST /prompt take). With --to ui, lay an API workflow out for the "
                    "editor. Exit code 2 when the input cannot be converted (the message names the node).",
    )
    parser.add_argument("input", type=Path, help="workflow file: UI- or API-format JSON, or a PNG saved by SaveImage")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    parser.add_argument("--to", choices=("api", "ui"), default="api", help="target format (default: api)")
    parser.set_defaults(func=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    object_info: dict | None = None

    def info() -> dict:
        nonlocal object_info
        if object_info is None:
            object_info = conversion_object_info()
        return object_info

    try:
        prompt, _ = load_workflow(args.input, info)
        result = api_to_ui(prompt, info()) if args.to == "ui" else prompt
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    text = json.dumps(result, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK
