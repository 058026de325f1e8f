"""The WebSocket hub: who is connected, and which messages each of them gets.

Messages follow ComfyUI: `status` (with `sid`) on connect and to everyone on every queue change; a prompt's
execution events only to the client that queued it (to everyone when it named no client). Live previews are
binary frames, sent only to clients that announced what they can take with a `feature_flags` message: type 4
(JSON metadata, then the JPEG) to those that set `supports_preview_metadata`, type 1 (a bare JPEG) to the others
that sent flags. Clients that never sent flags get no binary frames at all: some older clients break on them.

Each client has its own outgoing queue and sender task, so one slow client never holds up the others, and
previews are dropped for a client whose queue is backed up rather than piling up behind its JSON messages; a
client that reads nothing at all is closed once its backlog reaches BACKLOG_LIMIT, so it cannot eat the memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG = 1
PNG = 2
PREVIEW_BACKLOG_LIMIT = 8
BACKLOG_LIMIT = 10000
SERVER_FEATURE_FLAGS_KEY = "feature_flags"


def preview_frame(jpeg: bytes) -> bytes:
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg


def image_frame(png: bytes) -> bytes:
    """SaveImageWebsocket's frame, as ComfyUI sends it: type 1, format 2, then the PNG."""
    return struct.pack(">II", PREVIEW_IMAGE, PNG) + png


def preview_frame_with_metadata(jpeg: bytes, metadata: dict[str, Any]) -> bytes:
    encoded = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(encoded)) + encoded + jpeg


@dataclass
class Client:
    sid: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    feature_flags: dict[str, Any] | None = None
    sender: asyncio.Task | None = None
    secret: str = ""  # the browser's binding cookie: who may take this client id over while it is connected

    @property
    def wants_previews(self) -> bool:
        return self.feature_flags is not None

    @property
    def wants_metadata(self) -> bool:
        return bool(self.feature_flags and self.feature_flags.get("supports_preview_metadata"))

    async def run_sender(self) -> None:
        while True:
            message = await self.outbox.get()
            try:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("websocket client %s went away: %s", self.sid, exc)
                return


class Hub:
    """Lives on the event loop; other threads reach it through `post` and `post_preview`."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def connect(self, sid: str, ws: web.WebSocketResponse) -> Client:
        """Registers a client; a reconnect with the same id replaces the old socket."""
        old = self.clients.pop(sid, None)
        if old is not None:
            self._stop(old)
            asyncio.ensure_future(old.ws.close())
        client = Client(sid, ws)
        client.sender = asyncio.ensure_future(client.run_sender())
        self.clients[sid] = client
        return client

    def disconnect(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        self._stop(client)

    @staticmethod
    def _stop(client: Client) -> None:
        if client.sender is not None:
            client.sender.cancel()

    def _targets(self, sid: str | None) -> list[Client]:
        if sid is None:
            return list(self.clients.values())
        client = self.clients.get(sid)
        return [client] if client is not None else []

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """On the loop: one JSON message to `sid`, or to everyone when `sid` is None."""
        self.send_text(json.dumps({"type": event, "data": data}, default=str), sid)

    def send_text(self, text: str, sid: str | None) -> None:
        for client in self._targets(sid):
            if client.outbox.qsize() >= BACKLOG_LIMIT:
                log.warning("websocket client %s reads nothing (%d messages waiting); closing it", client.sid,
                            client.outbox.qsize())
                self.disconnect(client)
                asyncio.ensure_future(client.ws.close())
                continue
            client.outbox.put_nowait(text)

    def send_preview(self, jpeg: bytes, metadata: dict[str, Any], sid: str | None) -> None:
        plain: bytes | None = None
        tagged: bytes | None = None
        for client in self._targets(sid):
            if not client.wants_previews or client.outbox.qsize() > PREVIEW_BACKLOG_LIMIT:
                continue
            if client.wants_metadata:
                tagged = tagged or preview_frame_with_metadata(jpeg, metadata)
                client.outbox.put_nowait(tagged)
            else:
                plain = plain or preview_frame(jpeg)
                client.outbox.put_nowait(plain)

    def send_image(self, png: bytes, sid: str | None) -> None:
        """An output image (SaveImageWebsocket): to every target, feature flags or not, since the client asked for
        it by putting the node in its workflow; queued like a JSON message, never dropped as a preview is."""
        frame = image_frame(png)
        for client in self._targets(sid):
            client.outbox.put_nowait(frame)

    def wants_previews(self, sid: str | None) -> bool:
        """Whether anyone would receive a preview for `sid` (safe to call from any thread: a snapshot read)."""
        return any(c.wants_previews for c in list(self._targets(sid)))

    # -- from other threads -------------------------------------------------------------------------------------

    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """Thread-safe `send`: serialises here, in the caller's thread, and hands the text to the loop."""
        if self.loop is None or self.loop.is_closed():
            return
        text = json.dumps({"type": event, "data": data}, default=str)
        self._call_soon(self.send_text, text, sid)

    def post_preview(self, jpeg: bytes, metadata: dict[str, Any], sid: str | None) -> None:
        self._call_soon(self.send_preview, jpeg, metadata, sid)

    def post_image(self, png: bytes, sid: str | None) -> None:
        self._call_soon(self.send_image, png, sid)

    def _call_soon(self, callback: Any, *args: Any) -> None:
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed between the check and the call: the server is shutting down
            pass

    async def close_all(self) -> None:
        for client in list(self.clients.values()):
            self.disconnect(client)
            await client.ws.close()
