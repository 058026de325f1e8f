"""What the engine knows, for the editor and for clients: `POST /prompt/estimate` and the recorded timings.

The estimate plans the workflow against the live cache (nothing executes, no cache entry is touched) and prices
the nodes that would run from the timings the worker records after each prompt (`timings.TimingStore`). Prompts
already queued run first and may change what is cached; the answer says how many there are.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.server import api_models as M
from latentgraph.server.jsonio import ApiError, read_object
from latentgraph.server.operations import operation
from latentgraph.server.routes_queue import accept_ui_workflow
from latentgraph.server.routing import add_api_routes
from latentgraph.server.state import get_state
from latentgraph.server.timings import TimingStore

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
TIMINGS = web.AppKey("latentgraph_timings", TimingStore)
EXTENSION_SCRIPT = Path(__file__).with_name("editor_insight.js")
EXTENSION_URL = "/latentgraph/insight.js"


def estimate_prompt(state: Any, store: TimingStore, prompt: dict[str, Any],
                    targets: list[str] | None) -> dict[str, Any]:
    """The executor's estimate plus the queue ahead of it (called off the event loop)."""
    answer = state.executor.estimate(prompt, targets, store.history)
    answer["queue_ahead"] = state.queue.remaining()
    return answer


@routes.post("/prompt/estimate")
@operation("Which nodes a prompt would run and how long they should take (nothing runs)", body=M.PromptRequest,
           response=M.Estimate)
async def post_estimate(request: web.Request) -> web.Response:
    """Which nodes a prompt would run and how long they should take; the body is /prompt's (API or editor JSON)."""
    state = get_state(request)
    body = await accept_ui_workflow(await read_object(request, state.options.max_json_bytes), request)
    prompt = body.get("prompt")
    if not isinstance(prompt, dict):
        raise ApiError(400, "invalid_prompt", "No prompt provided",
                       "the body needs a 'prompt' object: the workflow in API format", node_errors={})
    targets = body.get("partial_execution_targets")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise ApiError(400, "invalid_prompt", "Invalid partial_execution_targets",
                       "partial_execution_targets must be a list of node ids", node_errors={})
    try:
        answer = await asyncio.to_thread(estimate_prompt, state, request.app[TIMINGS], prompt, targets or None)
    except InvalidPrompt as exc:
        return web.json_response(exc.validation.as_response(), status=400)
    except Exception as exc:  # a node's fingerprint or check raised: the prompt's fault, as /prompt reports it
        log.info("estimate failed: %r", exc)
        raise ApiError(400, "invalid_prompt", "Invalid prompt", f"{type(exc).__name__}: {exc}"[:1000],
                       node_errors={}) from exc
    return web.json_response(answer)


@routes.get("/latentgraph/timings")
@operation("Recorded node timings per class and device", response=list[M.NodeTiming], errors=())
async def get_timings(request: web.Request) -> web.Response:
    """The recorded timings per class and device (count, mean wall time, largest peak memory)."""
    return web.json_response(await asyncio.to_thread(request.app[TIMINGS].summary))


def add_insight_routes(app: web.Application, store: TimingStore) -> None:
    """The estimate and timing routes (also under /api) and the editor extension that shows them."""
    app[TIMINGS] = store
    add_api_routes(app, routes)

    async def script(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(EXTENSION_SCRIPT, headers={"Cache-Control": "no-cache"})

    app.router.add_get(EXTENSION_URL, script)
