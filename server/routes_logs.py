"""`/internal/logs`: the server's recent log lines, for the editor's terminal panel.

A bounded buffer attached to the root logger while the app runs; `add_log_buffer` wires it to one app so two
servers in one process (as in the tests) keep separate buffers.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timezone

from aiohttp import web

internal_routes = web.RouteTableDef()


class LogBuffer(logging.Handler):
    """The server's recent log records, for the editor's terminal panel (`/internal/logs`)."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.records: deque[dict[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stamp = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        self.records.append({"t": stamp, "m": self.format(record) + "\n"})


LOGS = web.AppKey("latentgraph_editor_logs", LogBuffer)


@internal_routes.get("/internal/logs")
async def logs_text(request: web.Request) -> web.Response:
    return web.json_response("".join(r["m"] for r in request.app[LOGS].records))


@internal_routes.get("/internal/logs/raw")
async def logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": list(request.app[LOGS].records), "size": {"cols": 120, "rows": 40}})


@internal_routes.patch("/internal/logs/subscribe")
async def logs_subscribe(request: web.Request) -> web.Response:
    """The editor asks for live log lines; it shows the buffered ones from /internal/logs/raw instead."""
    return web.json_response({})


def add_log_buffer(app: web.Application) -> None:
    """A buffer on the root logger for the app's lifetime, and the routes that read it."""
    buffer = LogBuffer()
    app[LOGS] = buffer

    async def attach_logs(app: web.Application) -> None:
        logging.getLogger().addHandler(buffer)

    async def detach_logs(app: web.Application) -> None:
        logging.getLogger().removeHandler(buffer)

    app.on_startup.append(attach_logs)
    app.on_cleanup.append(detach_logs)
    app.router.add_routes(internal_routes)
