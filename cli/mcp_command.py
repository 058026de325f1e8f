"""`latentgraph mcp`: an MCP server on stdin/stdout whose tools are the library workflows of a running server."""

from __future__ import annotations

import argparse
import asyncio
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mcp", help="serve the library workflows as MCP tools over stdio (for AI agents)",
        description="An MCP server on stdin/stdout (the official mcp SDK: pip install 'latentgraph[mcp]'). Every "
                    "library workflow of the running server at --url is a tool whose input schema is its declared "
                    "interface; runs are queued on that server, so they show in its /queue, /history and /jobs.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="the running latentgraph server")
    parser.add_argument("--token", default=os.environ.get("LATENTGRAPH_TOKEN"),
                        help="the server's token (default $LATENTGRAPH_TOKEN)")
    parser.set_defaults(func=mcp_command)


def mcp_command(args: argparse.Namespace) -> int:
    from latentgraph.server.mcp_door import Backend, run_stdio

    asyncio.run(run_stdio(Backend(args.url, args.token)))
    return 0
