"""The WebSocket at /ws (no /api twin, as in ComfyUI): status on connect, feature flags, then the hub's messages."""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import uuid

from aiohttp import WSMsgType, web
from latentgraph.server.routes_info import server_feature_flags
from latentgraph.server.state import get_state

log = logging.getLogger(__name__)

CLIENT_COOKIE = "latentgraph_client"
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_CLIENT_MESSAGE = 1024 * 1024


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = get_state(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_MESSAGE)
    # A client id is bound to the socket that holds it: while that socket is open, another socket asking for the
    # same id gets a fresh one (sent in `status.sid`, which ComfyUI clients adopt) instead of taking its events
    # over, unless it comes from the same browser (the cookie set on the first handshake), as a reconnect does.
    secret = request.cookies.get(CLIENT_COOKIE) or secrets.token_urlsafe(18)
    if CLIENT_COOKIE not in request.cookies:
        ws.set_cookie(CLIENT_COOKIE, secret, httponly=True, samesite="Strict", path="/")
    await ws.prepare(request)
    requested = request.query.get("clientId", "")
    sid = requested if CLIENT_ID.match(requested) else uuid.uuid4().hex
    holder = state.hub.clients.get(sid)
    if holder is not None and not holder.ws.closed and not hmac.compare_digest(holder.secret, secret):
        log.info("websocket client id %s is held by another open socket; the new socket gets a fresh id", sid)
        sid = uuid.uuid4().hex
    client = state.hub.connect(sid, ws)
    client.secret = secret
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
