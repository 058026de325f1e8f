"""The WebSocket at /ws (no /api twin, as in ComfyUI): status on connect, feature flags, then the hub's messages."""

from __future__ import annotations

import json
import logging
import re
import uuid

from aiohttp import WSMsgType, web
from latentgraph.server.routes_info import server_feature_flags
from latentgraph.server.state import get_state

log = logging.getLogger(__name__)

CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_CLIENT_MESSAGE = 1024 * 1024


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = get_state(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    requested = request.query.get("clientId", "")
    sid = requested if CLIENT_ID.match(requested) else uuid.uuid4().hex
    client = state.hub.connect(sid, ws)
    try:
        state.hub.send("status", {"status": state.queue_status(), "sid": sid}, sid)
        running = state.worker.current
        if running is not None and running.item.client_id == sid and running.node is not None:
            state.hub.send("executing", {"node": running.node, "display_node": running.node,
                                         "prompt_id": running.item.prompt_id}, sid)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "feature_flags":
                flags = data.get("data")
                client.feature_flags = flags if isinstance(flags, dict) else {}
                state.hub.send("feature_flags", server_feature_flags(state.options.max_upload_bytes), sid)
    finally:
        state.hub.disconnect(client)
    return ws


def add_websocket_route(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
