"""`latentgraph nodes`: list the installed nodes, their inputs and outputs, or their schemas as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from latentgraph.cli.common import add_base_dir_argument, make_executor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nodes", help="list node types and their inputs",
        description="List the installed node types. With --json, print ComfyUI's object_info; with --schema, "
                    "each node's JSON Schema.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these node types")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the object_info JSON the editor reads")
    output.add_argument("--schema", action="store_true", help="print each node's JSON Schema")
    add_base_dir_argument(parser)
    parser.set_defaults(func=nodes_command)


def nodes_command(args: argparse.Namespace) -> int:
    executor = make_executor(args.base_dir)
    registry, env = executor.registry, executor.env
    names = args.names or registry.names()
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"error: unknown node type(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({n: registry.object_info(env, n)[n] for n in names}, indent=2))
        return 0
    if args.schema:
        print(json.dumps({n: registry.schema(n) for n in names}, indent=2))
        return 0
    info = registry.object_info(env)
    for name in names:
        entry = info[name]
        print(f"{name}  [{entry['category']}]  {entry['description']}")
        for section in ("required", "optional"):
            for input_name, (kind, options) in entry["input"].get(section, {}).items():
                kind_text = "choice" if isinstance(kind, list) else kind
                extras = ", ".join(f"{k}={v}" for k, v in options.items() if k in ("default", "min", "max"))
                flag = "" if section == "required" else " (optional)"
                print(f"    {input_name}: {kind_text}{flag}" + (f"  ({extras})" if extras else ""))
        outputs = ", ".join(f"{n}:{t}" for n, t in zip(entry["output_name"], entry["output"]))
        print(f"    -> {outputs or '(output node)'}")
    for plugin, message in registry.load_errors:
        print(f"warning: plugin {plugin} failed to load: {message.strip().splitlines()[-1]}", file=sys.stderr)
    return 0
