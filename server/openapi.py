"""`GET /openapi.json`: an OpenAPI 3.1 description of the HTTP API, generated from the routes themselves.

Every route registered under /api carries an `@operation` (server.operations) naming its pydantic body models
(server.api_models); this walks the app's router and turns those into paths, parameters and component schemas
(pydantic writes JSON Schema 2020-12, which OpenAPI 3.1 uses as is: tuples become `prefixItems`). Nothing here
is written by hand but the document's header, so the spec cannot drift from what is served; the route-coverage
test checks the two against each other.
"""

from __future__ import annotations

import asyncio
import copy
import re
from functools import cache
from typing import Any

from aiohttp import web
from latentgraph.server.api_models import ErrorBody
from latentgraph.server.operations import Operation, operation, operation_of
from latentgraph.server.routes_info import latentgraph_version
from latentgraph.server.routes_workflows import workflow_paths
from latentgraph.server.routing import API_PREFIX
from latentgraph.server.state import get_state
from pydantic import BaseModel, RootModel, TypeAdapter

routes = web.RouteTableDef()

REF = "#/components/schemas/{model}"
PATH_PARAM = re.compile(r"\{([^}/:]+)(?::[^}]*)?\}")
AUTH_ERRORS = (401, 403)  # every route answers these when a token is set
DESCRIPTION = (
    "ComfyUI-compatible API. Every path also answers under /api. WebSocket: /ws?clientId=ID sends status, "
    "execution_start, execution_cached, executing, progress, executed, execution_success, execution_error and "
    "execution_interrupted messages; clients that send a feature_flags message get binary preview frames (type 4 "
    "with metadata when they set supports_preview_metadata, else type 1). With a token set, send "
    "'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every request.")


@cache
def _json_schema(declared: Any, mode: str) -> dict[str, Any]:
    """pydantic's schema for a type, built once per type (building a TypeAdapter costs milliseconds)."""
    return TypeAdapter(declared).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]


class SpecBuilder:
    """Collects component schemas while operations are turned into OpenAPI objects."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def schema(self, declared: Any, mode: str) -> dict[str, Any]:
        """A JSON Schema for a declared type; a plain model becomes a `$ref` to its component."""
        schema = copy.deepcopy(_json_schema(declared, mode))
        self.schemas.update(schema.pop("$defs", {}))
        if isinstance(declared, type) and issubclass(declared, BaseModel) and not issubclass(declared, RootModel):
            self.schemas[declared.__name__] = schema
            return {"$ref": REF.format(model=declared.__name__)}
        return schema

    def parameters(self, path: str, query: Any) -> list[dict[str, Any]]:
        params: list[dict[str, Any]] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                        for name in PATH_PARAM.findall(path)]
        if query is not None:
            schema = copy.deepcopy(_json_schema(query, "validation"))
            self.schemas.update(schema.pop("$defs", {}))
            for name, field in query.model_fields.items():
                prop = dict(schema["properties"][name])
                description = prop.pop("description", "")
                params.append({"name": name, "in": "query", "required": field.is_required(), "schema": prop,
                               **({"description": description} if description else {})})
        return params

    def operation(self, op: Operation, path: str, method: str) -> dict[str, Any]:
        ok: dict[str, Any] = {"description": "No content" if op.status == 204 else "OK"}
        if op.response is not None:
            ok["content"] = {op.response_media: {"schema": self.schema(op.response, "serialization")}}
        error = {"content": {"application/json": {"schema": self.schema(ErrorBody, "serialization")}}}
        answers = {str(op.status): ok, **{str(code): {"description": "error", **error}
                                          for code in (*op.errors, *AUTH_ERRORS)}}
        spec: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path),
                                "responses": answers}
        if op.description:
            spec["description"] = op.description
        if op.tags:
            spec["tags"] = list(op.tags)
        if params := self.parameters(path, op.query):
            spec["parameters"] = params
        if op.body is not None:
            spec["requestBody"] = {"required": op.body_required, "content": {
                op.body_media: {"schema": self.schema(op.body, "validation")}}}
        return {**spec, **op.extra}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", PATH_PARAM.sub(r"by_\1", path)).strip("_")
    return f"{method.lower()}_{words or 'root'}"


def api_path(route: web.AbstractRoute) -> str | None:
    """The route's path template without the /api mirror prefix (None for static and prefix resources)."""
    info = route.resource.get_info() if route.resource is not None else {}
    path = info.get("formatter") or info.get("path")
    if path is None:
        return None
    return path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path


def build_spec(app: web.Application) -> dict[str, Any]:
    """The document for every route of `app` that declares an `@operation`."""
    builder = SpecBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        op, path = operation_of(route.handler), api_path(route)
        if op is None or path is None or route.method == "HEAD":
            continue
        paths.setdefault(path, {})[route.method.lower()] = builder.operation(op, path, route.method)
    return {
        "openapi": "3.1.0",
        "info": {"title": "latentgraph", "version": latentgraph_version(), "description": DESCRIPTION},
        "servers": [{"url": "/"}, {"url": API_PREFIX}],
        "components": {"schemas": dict(sorted(builder.schemas.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "query": {"type": "apiKey", "in": "query", "name": "token"}}},
        "security": [{"bearer": []}, {"query": []}, {}],
        "paths": dict(sorted(paths.items())),
    }


@routes.get("/openapi.json")
@operation("This document", response=dict[str, Any], errors=())
async def openapi_json(request: web.Request) -> web.Response:
    spec = await asyncio.to_thread(build_spec, request.app)
    # one typed operation per library workflow (the library changes at run time, so this part is built per request)
    paths, schemas = await asyncio.to_thread(workflow_paths, get_state(request))
    spec["paths"].update(paths)
    spec["components"].setdefault("schemas", {}).update(schemas)
    return web.json_response(spec)
