"""`latentgraph serve`: the ComfyUI-compatible HTTP and WebSocket API, on 127.0.0.1:8188 unless told otherwise."""

from __future__ import annotations

import argparse
import importlib.util
import logging

from latentgraph.cli.common import (
    add_base_dir_argument,
    add_compile_argument,
    add_threads_argument,
    apply_compile,
    apply_threads,
)
from latentgraph.server.options import DEFAULT_PORT, TOKEN_ENV, RayOptions, ServerOptions, is_loopback


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the HTTP/WebSocket API (ComfyUI-compatible)",
        description="Serve the ComfyUI-compatible HTTP and WebSocket API with a persistent queue and history. "
                    "Listens on 127.0.0.1 only, unless --listen names another address.",
    )
    add_base_dir_argument(parser)
    add_threads_argument(parser)
    add_compile_argument(parser)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument("--listen", metavar="ADDRESS", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1); any other address exposes the server to "
                             "the network, so set a token")
    parser.add_argument("--token", default=None,
                        help=f"require this token on every request (default: ${TOKEN_ENV} when set)")
    parser.add_argument("--allow-origin", dest="allowed_origins", action="append", default=[], metavar="ORIGIN",
                        help="let browser pages from ORIGIN (e.g. http://localhost:5173) call the API; repeatable")
    parser.add_argument("--allow-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                        help="accept requests addressed to host NAME while listening on loopback; repeatable")
    parser.add_argument("--history-limit", type=int, default=10000, help="finished prompts kept (default 10000)")
    parser.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload in MiB (default 100)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run prompts on Ray workers: alone, start a local Ray cluster; 'auto' or an address "
                             "joins a running one (needs the ray extra: pip install latentgraph[ray])")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="with --ray: number of workers (default one per GPU of the cluster, else 1)")
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                        help="with --ray: torch threads (and Ray CPUs) of each CPU worker (default 1)")
    parser.add_argument("--hang-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="with --ray: a worker silent this long while running a prompt is restarted and the "
                             "prompt run again once (default 600)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from latentgraph.server.app import run

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_threads(args.threads)
    apply_compile(args.compile)
    if args.history_limit < 1:
        print("error: --history-limit must be at least 1")
        return 2
    ray = None
    if args.ray is not None:
        try:
            ray = RayOptions(address=None if args.ray == "local" else args.ray, workers=args.workers,
                             threads_per_worker=args.threads_per_worker, hang_timeout_s=args.hang_timeout)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        if importlib.util.find_spec("ray") is None:
            print("error: --ray needs Ray: pip install 'latentgraph[ray]'")
            return 2
    elif args.workers is not None:
        print("error: --workers needs --ray")
        return 2
    options = ServerOptions(base_dir=args.base_dir, host=args.listen, port=args.port, token=args.token,
                            history_limit=args.history_limit, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                            allowed_origins=args.allowed_origins, allowed_hosts=args.allowed_hosts, ray=ray)
    if not is_loopback(options.host) and options.token:
        print(f"listening on {options.host}: every request needs the token")
    run(options)
    return 0
