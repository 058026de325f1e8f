"""Every API route answers at `/X` and at `/api/X`, as ComfyUI's do; this registers a route table both ways."""

from __future__ import annotations

from aiohttp import web

API_PREFIX = "/api"


def add_api_routes(app: web.Application, routes: web.RouteTableDef) -> None:
    """Adds each route of `routes` at its path and again under /api (routes must be plain, not static)."""
    for route in routes:
        if not isinstance(route, web.RouteDef):
            raise TypeError(f"only plain routes can be mirrored under {API_PREFIX}, not {route!r}")
        for path in (route.path, API_PREFIX + route.path):
            app.router.add_route(route.method, path, route.handler, **route.kwargs)
