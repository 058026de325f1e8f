"""The `latentgraph` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

COMMAND_MODULES = [
    "latentgraph.cli.run",
    "latentgraph.cli.workflows",
    "latentgraph.cli.check",
    "latentgraph.cli.nodes",
    "latentgraph.cli.serve",
    "latentgraph.cli.convert",
    "latentgraph.cli.train",
    "latentgraph.cli.mcp_command",
]


def _version() -> str:
    try:
        return version("latentgraph")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentgraph",
        description="A node-graph workflow engine for Stable Diffusion that speaks ComfyUI's workflow format and API.",
        epilog="Run 'latentgraph COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"latentgraph {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
