"""Safe defaults for a server that can run arbitrary workflows: who may call it, and from which page.

- Token: when one is set, every route and the WebSocket need it, as `Authorization: Bearer TOKEN`, as the
  password of HTTP Basic auth (what many ComfyUI client libraries can send), as `?token=TOKEN`, or as the
  cookie set after a valid `?token=` (so a browser that opened the editor with the token keeps working).
- Origin: a browser request whose Origin is not this server's own (or an explicitly allowed one) is refused,
  so that a web page the user happens to visit cannot queue prompts or read files here.
- Host: while bound to loopback, only loopback host names are answered, which defeats DNS rebinding (a hostile
  name that resolves to 127.0.0.1 would otherwise pass the Origin check as "same origin").
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from latentgraph.server.jsonio import ApiError
from latentgraph.server.options import ServerOptions, is_loopback

TOKEN_COOKIE = "latentgraph_token"
TOKEN_QUERY = "token"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(host: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or a bare name -> (lower-case name, port or None)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name, int(port) if port.isdigit() else None


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_guard(options: ServerOptions) -> Any:
    allowed = {h.lower() for h in options.allowed_hosts}

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host:
            name, _ = split_host(host)
            if not _is_loopback_name(name) and name not in allowed:
                raise ApiError(403, "forbidden_host", "Host not allowed",
                               "this server listens on loopback only; add the name with --allow-host to use it")
        return await handler(request)

    return middleware


def origin_guard(options: ServerOptions) -> Any:
    allowed = {o.rstrip("/").lower() for o in options.allowed_origins}

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and "*" not in allowed and origin.rstrip("/").lower() not in allowed:
            parsed = urlsplit(origin.lower())
            own_name, own_port = split_host(request.headers.get("Host", ""))
            try:
                origin_port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
            except ValueError:
                origin_port = None
            own_port = own_port or DEFAULT_PORTS.get(request.scheme)
            if origin == "null" or parsed.hostname != own_name or origin_port != own_port:
                raise ApiError(403, "cross_origin_refused", "Cross-origin request refused",
                               f"requests from {origin[:100]!r} are not allowed; start the server with "
                               "--allow-origin to allow a page from another origin")
        return await handler(request)

    return middleware


def _supplied_token(request: web.Request) -> tuple[str | None, bool]:
    """The token the request carries, and whether it came in the query string."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip(), False
    if scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            return password, False
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 (UnicodeDecodeError)
            return None, False
    if TOKEN_QUERY in request.query:
        return request.query[TOKEN_QUERY], True
    return request.cookies.get(TOKEN_COOKIE), False


def token_guard(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        supplied, from_query = _supplied_token(request)
        # A header that is not UTF-8 reaches us with surrogate escapes; it cannot match, and must not raise.
        if supplied is None or not hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected):
            raise ApiError(401, "unauthorized", "A valid token is required",
                           "send it as 'Authorization: Bearer TOKEN' or as ?token=TOKEN")
        response = await handler(request)
        if from_query and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return middleware


def security_middlewares(options: ServerOptions) -> list[Any]:
    middlewares = []
    if is_loopback(options.host):
        middlewares.append(host_guard(options))
    middlewares.append(origin_guard(options))
    if options.token:
        middlewares.append(token_guard(options.token))
    return middlewares
