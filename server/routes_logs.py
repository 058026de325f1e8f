"""`/internal/logs`: the server's recent log lines, for the editor's terminal panel, and new ones as they come.

A bounded buffer attached to the root logger while the app runs; `add_log_buffer` wires it to one app so two
servers in one process (as in the tests) keep separate buffers. A client that subscribes (ComfyUI's
`PATCH /internal/logs/subscribe {enabled, clientId}`) gets each new line as a `logs` WebSocket message, which
the terminal panel appends.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import datetime, timezone

from aiohttp import web
from latentgraph.server.jsonio import read_object
from latentgraph.server.state import STATE
from latentgraph.server.ws import Hub

internal_routes = web.RouteTableDef()


class LogBuffer(logging.Handler):
    """The server's recent log records, for the editor's terminal panel (`/internal/logs`)."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.records: deque[dict[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.hub: Hub | None = None
        self.subscribers: set[str] = set()
        self._sending = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        stamp = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        entry = {"t": stamp, "m": self.format(record) + "\n"}
        self.records.append(entry)
        if not self.subscribers or self.hub is None or getattr(self._sending, "active", False):
            return
        self._sending.active = True  # a line logged while sending one must not send itself, and so on
        try:
            for sid in list(self.subscribers):
                self.hub.post("logs", {"entries": [entry], "size": TERMINAL_SIZE}, sid)
        finally:
            self._sending.active = False


LOGS = web.AppKey("latentgraph_editor_logs", LogBuffer)
TERMINAL_SIZE = {"cols": 120, "rows": 40}


@internal_routes.get("/internal/logs")
async def logs_text(request: web.Request) -> web.Response:
    return web.json_response("".join(r["m"] for r in request.app[LOGS].records))


@internal_routes.get("/internal/logs/raw")
async def logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": list(request.app[LOGS].records), "size": TERMINAL_SIZE})


@internal_routes.patch("/internal/logs/subscribe")
async def logs_subscribe(request: web.Request) -> web.Response:
    """`{enabled, clientId}`: the client's WebSocket gets (or stops getting) each new log line."""
    body = await read_object(request, 64 * 1024)
    client_id, enabled = body.get("clientId"), body.get("enabled")
    if not isinstance(client_id, str) or not client_id or not isinstance(enabled, bool):
        return web.json_response({"error": "expected {enabled: boolean, clientId: string}"}, status=400)
    buffer = request.app[LOGS]
    if enabled:
        buffer.subscribers.add(client_id)
    else:
        buffer.subscribers.discard(client_id)
    return web.json_response({})


def add_log_buffer(app: web.Application) -> None:
    """A buffer on the root logger for the app's lifetime, and the routes that read it."""
    buffer = LogBuffer()
    buffer.hub = app[STATE].hub if STATE in app else None
    app[LOGS] = buffer

    async def attach_logs(app: web.Application) -> None:
        logging.getLogger().addHandler(buffer)

    async def detach_logs(app: web.Application) -> None:
        logging.getLogger().removeHandler(buffer)

    app.on_startup.append(attach_logs)
    app.on_cleanup.append(detach_logs)
    app.router.add_routes(internal_routes)
