"""The app factory and the serving loop: one aiohttp application per server, testable in-process or as a process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from latentgraph.engine.executor import DEFAULT_CACHE_BYTES, Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.memory_probe import install_memory_probe
from latentgraph.nodes.workflow_nodes import register_workflow_nodes
from latentgraph.server import (
    openapi,
    routes_files,
    routes_i18n,
    routes_info,
    routes_openai,
    routes_queue,
    routes_sdapi,
    routes_settings,
    routes_userdata,
    routes_workers,
    routes_workflows,
)
from latentgraph.server.jsonio import json_errors
from latentgraph.server.mcp_door import add_mcp_route
from latentgraph.server.options import ServerOptions, is_loopback
from latentgraph.server.queue import DatabaseCorrupt, PromptQueue
from latentgraph.server.routes_insight import add_insight_routes
from latentgraph.server.routes_logs import add_log_buffer
from latentgraph.server.routes_static import add_static_routes
from latentgraph.server.routes_templates import add_template_routes
from latentgraph.server.routes_ws import add_websocket_route
from latentgraph.server.routing import add_api_routes
from latentgraph.server.security import security_middlewares
from latentgraph.server.state import STATE, ServerState, broadcast_status
from latentgraph.server.timings import TimingStore, record_run
from latentgraph.server.worker import Worker
from latentgraph.server.ws import Hub

if TYPE_CHECKING:
    from latentgraph.server.dispatch import RayDispatcher

log = logging.getLogger(__name__)


def ray_dispatcher(options: ServerOptions, executor: Executor, queue: PromptQueue, hub: Hub) -> RayDispatcher:
    """The Ray workers' dispatcher (`--ray`); imported here only, so a server without it never imports Ray."""
    from latentgraph.server.dispatch import RayDispatcher
    from latentgraph.server.ray_workers import WorkerConfig

    assert options.ray is not None
    config = WorkerConfig(base_dir=str(options.base_dir), threads=options.ray.threads_per_worker,
                          cache_bytes=options.cache_bytes or DEFAULT_CACHE_BYTES, registry=options.registry,
                          preview_interval_s=options.preview_interval_s, preview_max_size=options.preview_max_size,
                          shared_bytes=options.ray.shared_cache_bytes)
    return RayDispatcher(executor, queue, hub, lambda: broadcast_status(queue, hub), options.ray, config,
                         preview_interval_s=options.preview_interval_s, preview_max_size=options.preview_max_size)


def create_app(options: ServerOptions) -> web.Application:
    """The whole server as an aiohttp app; the worker thread starts and stops with the app."""
    registry = options.registry if options.registry is not None else load_registry()
    env = options.environment if options.environment is not None else make_environment(options.base_dir)
    install_memory_probe(env)
    executor = Executor(registry, env, cache_bytes=options.cache_bytes or DEFAULT_CACHE_BYTES)
    register_workflow_nodes(registry, env)  # saved workflows offered as nodes in the editor
    queue = PromptQueue(options.database_path, options.history_limit)
    hub = Hub()
    timings = TimingStore(options.database_path)
    executor.listeners.append(record_run(queue, timings))
    worker: Worker | RayDispatcher
    if options.ray is None:
        worker = Worker(executor, queue, hub, lambda: broadcast_status(queue, hub),
                        preview_interval_s=options.preview_interval_s, preview_max_size=options.preview_max_size)
    else:
        worker = ray_dispatcher(options, executor, queue, hub)
    state = ServerState(options, executor, queue, hub, worker)
    if queue.recovered:
        log.warning("%d prompt(s) were running when the server last stopped; they are in history as failed: %s",
                    len(queue.recovered), ", ".join(queue.recovered))

    app = web.Application(middlewares=[json_errors, *security_middlewares(options)],
                          client_max_size=options.max_json_bytes)
    app[STATE] = state
    for table in (routes_queue.routes, routes_files.routes, routes_info.routes, openapi.routes,
                  routes_userdata.routes, routes_settings.routes, routes_i18n.routes, routes_workflows.routes,
                  routes_openai.routes, routes_sdapi.routes, routes_workers.routes):
        add_api_routes(app, table)
    add_websocket_route(app)
    add_mcp_route(app, options)  # MCP over HTTP at /mcp when the mcp extra is installed
    app.router.add_routes(routes_info.internal_routes)
    add_template_routes(app)
    add_log_buffer(app)
    add_insight_routes(app, timings)
    add_static_routes(app)  # last: the editor's static files claim top-level names

    async def start(app: web.Application) -> None:
        hub.attach(asyncio.get_running_loop())
        state.worker.start()

    async def close_sockets(app: web.Application) -> None:
        await hub.close_all()

    async def stop(app: web.Application) -> None:
        await asyncio.to_thread(state.worker.stop)
        queue.close()
        timings.close()

    app.on_startup.append(start)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(stop)
    return app


async def serve(options: ServerOptions, on_ready: Callable[[str], None] | None = None) -> None:
    """Listens until SIGINT or SIGTERM, then shuts down cleanly (the running prompt is interrupted)."""
    if not is_loopback(options.host) and not options.token:
        print(f"WARNING: listening on {options.host} without a token: anyone who can reach this address can run "
              "workflows and read your images. Set --token or LATENTGRAPH_TOKEN.", file=sys.stderr, flush=True)
    runner = web.AppRunner(create_app(options), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        print(f"latentgraph is listening on {url} (base directory {options.base_dir})", flush=True)
        if on_ready is not None:
            on_ready(url)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        print("latentgraph is shutting down", flush=True)
    finally:
        await runner.cleanup()


def run(options: ServerOptions) -> None:
    """Serves until stopped; a damaged queue database ends it with the message saying how to recover (exit 1)."""
    try:
        asyncio.run(serve(options))
    except DatabaseCorrupt as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
