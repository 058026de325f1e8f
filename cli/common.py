"""What several commands share: the base directory option, building the engine, reading workflow files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from latentgraph.engine.executor import Executor
from latentgraph.engine.workflow_format import WorkflowFileError as WorkflowFileError  # re-exported for commands
from latentgraph.engine.workflow_format import load_workflow
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.memory_probe import install_memory_probe

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_base_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-dir", type=Path, default=Path(os.environ.get("LATENTGRAPH_BASE_DIR", ".")),
        help="folder holding models/, input/, output/, temp/ and user/ (default: the current folder, "
             "or $LATENTGRAPH_BASE_DIR)",
    )


def _thread_count(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_thread_count, default=os.environ.get("LATENTGRAPH_THREADS") or None, metavar="N",
        help="CPU threads PyTorch may use (default: $LATENTGRAPH_THREADS, else one per core; on a machine shared "
             "with other work, fewer threads are often faster and steadier)",
    )


def apply_threads(threads: int | None) -> None:
    """PyTorch takes one thread per core by default; on a busy or small machine those threads wait on each other
    and a sampling step can get many times slower, so the user may cap them."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """`--compile [BACKEND]` for run and serve: a bare `--compile` means inductor, the backend every device has."""
    parser.add_argument(
        "--compile", nargs="?", const="inductor", default=None, choices=["inductor", "cudagraphs"],
        metavar="BACKEND",
        help="run every model's denoiser through torch.compile (BACKEND inductor, the default, or cudagraphs); "
             "compiled graphs are cached under BASE_DIR/cache/compile, so only the first run of a size pays for "
             "compiling (default: $LATENTGRAPH_COMPILE, else eager)",
    )


def apply_compile(backend: str | None) -> None:
    """Through the environment variable the SD runtime reads, so that worker processes inherit the choice."""
    if backend is not None:
        os.environ["LATENTGRAPH_COMPILE"] = backend


def make_executor(base_dir: Path) -> Executor:
    env = make_environment(base_dir)
    install_memory_probe(env)  # names the device as the server does, so timings recorded there are found here
    return Executor(load_registry(), env)


def load_workflow_file(path: Path, executor: Executor) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(API prompt, editor graph or None) from API or editor JSON, or from a PNG that carries a workflow."""
    return load_workflow(path, lambda: executor.registry.object_info(executor.env))
