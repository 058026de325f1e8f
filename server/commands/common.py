"""What several commands share: the base directory option, building the engine, reading workflow files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from engine.executor import Executor
from nodes import load_registry, make_environment
from server.workflow_files import WorkflowFileError as WorkflowFileError  # re-exported for the commands
from server.workflow_files import load_workflow

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_base_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-dir", type=Path, default=Path(os.environ.get("LATENTGRAPH_BASE_DIR", ".")),
        help="folder holding models/, input/, output/, temp/ and user/ (default: the current folder, "
             "or $LATENTGRAPH_BASE_DIR)",
    )


def make_executor(base_dir: Path) -> Executor:
    env = make_environment(base_dir)
    return Executor(load_registry(), env)


def load_workflow_file(path: Path, executor: Executor) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(API prompt, editor graph or None) from API or editor JSON, or from a PNG that carries a workflow."""
    return load_workflow(path, lambda: executor.registry.object_info(executor.env))
