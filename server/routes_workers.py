"""`/workers`: what each execution worker is doing and holds (models, cache, running prompt, restarts).

Under `serve --ray` the workers are Ray actors behind the dispatcher (server/dispatch.py); otherwise there is one,
the in-process worker thread, described the same way.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import torch
from aiohttp import web
from latentgraph.server import api_models as M
from latentgraph.server.operations import operation
from latentgraph.server.state import ServerState, get_state
from latentgraph.server.worker import Worker
from latentgraph.server.worker_state import held_state

routes = web.RouteTableDef()


def workers_view(state: ServerState) -> dict[str, Any]:
    worker = state.worker
    if isinstance(worker, Worker):
        running = worker.current
        held = held_state(state.executor)
        return {"backend": "thread", "ready": True, "error": None, "workers": [{
            "id": 0, "alive": True, "pid": os.getpid(), "restarts": 0,
            "current_prompt": running.item.prompt_id if running is not None else None,
            "progress": running.progress if running is not None else None, "queue": 0,
            "models": held["models"], "cache_bytes": held["cache_bytes"], "cache_entries": held["cache_entries"],
            "prompts_done": None, "threads": torch.get_num_threads(), "shared": {}}]}
    return {"backend": "ray", "ready": worker.ready.is_set(), "error": worker.boot_error, "workers": worker.states()}


@routes.get("/workers")
@operation("Execution workers: running prompt, models loaded, cache size, restarts", response=M.Workers, errors=())
async def workers(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(workers_view, get_state(request)))
