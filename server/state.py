"""The objects one server instance is made of, stored on the aiohttp app so that every handler can reach them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from latentgraph.engine.executor import Executor
from latentgraph.server.options import ServerOptions
from latentgraph.server.queue import PromptQueue
from latentgraph.server.worker import Worker
from latentgraph.server.ws import Hub

if TYPE_CHECKING:
    from latentgraph.server.dispatch import RayDispatcher


@dataclass
class ServerState:
    options: ServerOptions
    executor: Executor
    queue: PromptQueue
    hub: Hub
    worker: Worker | RayDispatcher  # the in-process thread, or Ray workers behind a dispatcher (--ray)

    def queue_status(self) -> dict[str, Any]:
        return queue_status(self.queue)

    def broadcast_status(self) -> None:
        broadcast_status(self.queue, self.hub)

    def object_info(self) -> dict[str, Any]:
        """/object_info of every node: what UI-format conversion needs (call it off the event loop)."""
        return self.executor.registry.object_info(self.executor.env)


def queue_status(queue: PromptQueue) -> dict[str, Any]:
    """ComfyUI's `status` payload: how many prompts are pending or running."""
    return {"exec_info": {"queue_remaining": queue.remaining()}}


def broadcast_status(queue: PromptQueue, hub: Hub) -> None:
    """Tells every connected client the queue changed (from any thread)."""
    hub.post("status", {"status": queue_status(queue)})


STATE = web.AppKey("latentgraph_state", ServerState)


def get_state(request: web.Request) -> ServerState:
    return request.app[STATE]
