"""Reading request bodies and writing error answers, so that every malformed request gets a clear 4xx JSON error.

Errors use the shape of ComfyUI's prompt errors, `{"error": {"type", "message", "details"}}`, everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64
BODY_CHUNK = 64 * 1024
FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Bodies and answers larger than this are parsed or encoded in a thread: a few MB of JSON takes tens of
# milliseconds, which every other client would otherwise wait for.
OFF_LOOP_BYTES = 64 * 1024


class ApiError(web.HTTPException):
    """An HTTP error answered with a JSON body; raise it from any handler or helper."""

    def __init__(self, status: int, kind: str, message: str, details: str = "", **extra: Any) -> None:
        self.status_code = status
        body = {"error": {"type": kind, "message": message, "details": details}, **extra}
        super().__init__(text=json.dumps(body), content_type="application/json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth, computed without recursion so that a hostile document cannot exhaust the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON", str(exc)[:500]) from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, "invalid_json", "The request body is nested too deeply",
                       f"at most {MAX_JSON_DEPTH} levels of objects and lists are accepted")
    return value


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", "The request body is too large", f"the limit is {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however many TCP writes or chunks it arrives in; 413 beyond `limit` bytes.

    `request.content.read(n)` answers with what has arrived so far, not with n bytes: used alone it silently
    truncates a body that arrives in several writes. Every route reads its body through here instead.
    """
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    data = bytearray()
    try:
        while chunk := await request.content.read(BODY_CHUNK):
            data += chunk
            if len(data) > limit:
                raise _too_large(limit)
    except (ValueError, ConnectionError, HttpProcessingError) as exc:
        raise ApiError(400, "bad_request", "The request body could not be read", str(exc)[:300]) from exc
    return bytes(data)


async def read_json(request: web.Request, max_bytes: int, *, empty: Any = ...) -> Any:
    """The body as JSON; `empty` is returned for an empty body when given, else an empty body is an error."""
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        if empty is ...:
            raise ApiError(400, "invalid_json", "The request body is empty", "a JSON object is expected")
        return empty
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


async def json_answer(data: Any, status: int = 200) -> web.Response:
    """`web.json_response` for answers that may be large (history, validation errors), encoded in a thread
    instead of on the event loop."""
    body = await asyncio.to_thread(lambda: json.dumps(data).encode())
    return web.Response(body=body, status=status, content_type="application/json")


async def read_object(request: web.Request, max_bytes: int, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object (an empty body reads as {} when allowed)."""
    value = await read_json(request, max_bytes, empty={} if allow_empty else ...)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "The request body must be a JSON object",
                       f"got a JSON {type(value).__name__}")
    return value


def id_list(body: dict[str, Any], key: str) -> list[str]:
    """`body[key]` as a list of id strings, or a 400 naming what was wrong."""
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "invalid_request", f"'{key}' must be a list of id strings", f"got {value!r}"[:300])
    return value


MAX_QUERY_INT = 2**53  # SQLite stores at most 2^63 - 1; no paging value needs more than this


def query_int(request: web.Request, name: str, default: int | None, *, minimum: int = 0,
              maximum: int = MAX_QUERY_INT) -> int | None:
    """An integer query parameter within [minimum, maximum], or a 400 naming it."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"query parameter '{name}' must be an integer", repr(raw)[:100]) from exc
    if value < minimum:
        raise ApiError(400, "invalid_request", f"query parameter '{name}' must be at least {minimum}", str(value))
    if value > maximum:
        raise ApiError(400, "invalid_request", f"query parameter '{name}' must be at most {maximum}", str(value)[:40])
    return value


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves as JSON; an unexpected exception is logged and answered 500 without internals."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return web.json_response({"error": {"type": f"http_{exc.status}", "message": exc.reason, "details": ""}},
                                 status=exc.status, headers=headers)
    except OSError as exc:
        if exc.errno not in FULL_DISK_ERRNOS:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            return _internal_error()
        log.error("storage full answering %s %s: %s", request.method, request.path, exc)
        return web.json_response({"error": {"type": "insufficient_storage", "message": "The server cannot store this",
                                            "details": f"{exc.strerror or exc}: free some disk space on the server; "
                                                       "nothing was stored"}}, status=507)
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return _internal_error()


def _internal_error() -> web.Response:
    return web.json_response({"error": {"type": "internal_error", "message": "Internal server error",
                                        "details": "the error was logged on the server"}}, status=500)
