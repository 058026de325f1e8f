"""What several commands share: the base directory option, building the engine, reading workflow files."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from engine.executor import Executor
from nodes import load_registry, make_environment

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class WorkflowFileError(Exception):
    """A workflow file that cannot be read at all; the message says what to do."""


def add_base_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-dir", type=Path, default=Path(os.environ.get("LATENTGRAPH_BASE_DIR", ".")),
        help="folder holding models/, input/, output/, temp/ and user/ (default: the current folder, "
             "or $LATENTGRAPH_BASE_DIR)",
    )


def make_executor(base_dir: Path) -> Executor:
    env = make_environment(base_dir)
    return Executor(load_registry(), env)


def load_workflow_file(path: Path) -> dict[str, Any]:
    """An API-format workflow from a JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFileError(f"cannot read workflow file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "a workflow is a JSON object saved from the editor or written in ComfyUI's API format"
        ) from exc
    if not isinstance(data, dict):
        raise WorkflowFileError(f"{path} holds a JSON {type(data).__name__}, not a workflow object")
    return data
