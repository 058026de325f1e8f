"""`GET /openapi.json`: an OpenAPI 3.1 description of the HTTP API (ComfyUI's routes plus latentgraph's additions)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from latentgraph.server.routes_info import latentgraph_version
from latentgraph.server.routes_workflows import workflow_paths
from latentgraph.server.state import get_state

routes = web.RouteTableDef()

OBJ = {"type": "object"}
ANY_OBJ = {"type": "object", "additionalProperties": True}
STR_LIST = {"type": "array", "items": {"type": "string"}}
ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "type": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "string"}}}}}
QUEUE_ITEM = {"type": "array", "description": "[number, prompt_id, prompt, extra_data, outputs_to_execute]",
              "prefixItems": [{"type": "number"}, {"type": "string"}, OBJ, OBJ, STR_LIST]}
HISTORY_ENTRY = {"type": "object", "properties": {
    "prompt": QUEUE_ITEM, "outputs": ANY_OBJ, "meta": ANY_OBJ,
    "status": {"type": "object", "properties": {
        "status_str": {"type": "string", "enum": ["success", "error", "pending", "running"]},
        "completed": {"type": "boolean"}, "messages": {"type": "array"}}}}}
JOB = {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "failed",
                                                                  "cancelled"]},
    "priority": {"type": "number"}, "create_time": {"type": "integer"}, "execution_start_time": {"type": "integer"},
    "execution_end_time": {"type": "integer"}, "execution_error": OBJ, "outputs_count": {"type": "integer"},
    "preview_output": OBJ, "workflow_id": {"type": "string"}}}
PROMPT_REQUEST = {"type": "object", "required": ["prompt"], "properties": {
    "prompt": {"type": "object", "description": "the workflow in API format: {node_id: {class_type, inputs}}"},
    "client_id": {"type": "string", "description": "WebSocket clientId that receives this prompt's events"},
    "prompt_id": {"type": "string"}, "number": {"type": "number"},
    "front": {"type": "boolean", "description": "queue ahead of every pending prompt"},
    "extra_data": OBJ, "partial_execution_targets": STR_LIST}}


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, response: dict[str, Any] | None = None, *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, content: str = "application/json",
        errors: tuple[int, ...] = (400,)) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK", **({"content": {content: {"schema": response}}} if response else {})},
        **{str(code): {"description": "error", "content": {"application/json": {"schema": ERROR}}}
           for code in (*errors, 401, 403)}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def build_spec() -> dict[str, Any]:
    clear_or_delete = {"type": "object", "properties": {"clear": {"type": "boolean"}, "delete": STR_LIST}}
    upload = {"multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "type": {"type": "string", "enum": ["input", "temp",
                                                                                               "output"]},
        "subfolder": {"type": "string"}, "overwrite": {"type": "string"},
        "original_ref": {"type": "string", "description": "/upload/mask only: JSON {filename, subfolder, type}"}}}}}
    upload_op = _op("Store an uploaded image (renamed 'name (1).png' on a clash unless identical)",
                    {"type": "object", "properties": {"name": {"type": "string"}, "subfolder": {"type": "string"},
                                                      "type": {"type": "string"}}}, errors=(400, 404, 413))
    upload_op["requestBody"] = {"required": True, "content": upload}
    paths: dict[str, Any] = {
        "/prompt": {
            "post": _op("Validate and queue a workflow",
                        {"type": "object", "properties": {"prompt_id": {"type": "string"}, "number": {
                            "type": "number"}, "node_errors": OBJ}}, body=PROMPT_REQUEST, errors=(400, 413)),
            "get": _op("Queue size", {"type": "object", "properties": {"exec_info": {"type": "object", "properties": {
                "queue_remaining": {"type": "integer"}}}}}, errors=()),
        },
        "/queue": {
            "get": _op("Running and pending prompts", {"type": "object", "properties": {
                "queue_running": {"type": "array", "items": QUEUE_ITEM},
                "queue_pending": {"type": "array", "items": QUEUE_ITEM}}}, errors=()),
            "post": _op("Clear the pending queue or delete pending prompts", body=clear_or_delete),
        },
        "/interrupt": {"post": _op("Interrupt the running prompt (only prompt_id's, when given)", body={
            "type": "object", "properties": {"prompt_id": {"type": "string"}}})},
        "/free": {"post": _op("Free cached results and unload models between prompts", body={
            "type": "object", "properties": {"unload_models": {"type": "boolean"}, "free_memory": {
                "type": "boolean"}}})},
        "/history": {
            "get": _op("Finished prompts, oldest first", {"type": "object", "additionalProperties": HISTORY_ENTRY},
                       params=[_query("max_items", {"type": "integer", "minimum": 1}),
                               _query("offset", {"type": "integer", "minimum": -1})]),
            "post": _op("Clear history or delete entries", body=clear_or_delete),
        },
        "/history/{prompt_id}": {"get": _op("One prompt: finished, or pending/running with that status; {} if unknown",
                                            {"type": "object", "additionalProperties": HISTORY_ENTRY},
                                            params=[_path("prompt_id")], errors=())},
        "/jobs": {"get": _op("Queue and history as one paginated list of jobs", {"type": "object", "properties": {
            "jobs": {"type": "array", "items": JOB}, "pagination": {"type": "object", "properties": {
                "offset": {"type": "integer"}, "limit": {"type": ["integer", "null"]}, "total": {"type": "integer"},
                "has_more": {"type": "boolean"}}}}}, params=[
            _query("status", {"type": "string"}, "comma-separated: pending, in_progress, completed, failed, cancelled"),
            _query("workflow_id", {"type": "string"}),
            _query("sort_by", {"type": "string", "enum": ["created_at", "execution_duration"]}),
            _query("sort_order", {"type": "string", "enum": ["asc", "desc"]}),
            _query("limit", {"type": "integer", "minimum": 1}), _query("offset", {"type": "integer", "minimum": 0})])},
        "/jobs/{job_id}": {"get": _op("One job with its outputs and workflow", JOB, params=[_path("job_id")],
                                      errors=(404,))},
        "/jobs/{job_id}/cancel": {"post": _op("Cancel a pending job or interrupt a running one", {
            "type": "object", "properties": {"id": {"type": "string"}, "status": {"type": "string"}}},
            params=[_path("job_id")], errors=(404, 409))},
        "/object_info": {"get": _op("Every node class: inputs, outputs, category", ANY_OBJ, errors=())},
        "/object_info/{node_class}": {"get": _op("One node class ({} if unknown)", ANY_OBJ,
                                                 params=[_path("node_class")], errors=())},
        "/view": {"get": _op("A file from input/, output/ or temp/", {"type": "string", "format": "binary"},
                             content="image/*", errors=(400, 404), params=[
            _query("filename", {"type": "string"}, required=True),
            _query("type", {"type": "string", "enum": ["output", "input", "temp"]}),
            _query("subfolder", {"type": "string"}),
            _query("preview", {"type": "string"}, "re-encode as 'webp;90' or 'jpeg;90'"),
            _query("channel", {"type": "string", "enum": ["rgba", "rgb", "a"]})])},
        "/upload/image": {"post": upload_op},
        "/upload/mask": {"post": {**upload_op, "summary": "Store the original image with the uploaded mask's alpha"}},
        "/system_stats": {"get": _op("System and device information", ANY_OBJ, errors=())},
        "/embeddings": {"get": _op("Embedding names", STR_LIST, errors=())},
        "/extensions": {"get": _op("Editor extension scripts", STR_LIST, errors=())},
        "/features": {"get": _op("Server feature flags", ANY_OBJ, errors=())},
        "/models": {"get": _op("Model folder kinds", STR_LIST, errors=())},
        "/models/{folder}": {"get": _op("Model files of one kind", STR_LIST, params=[_path("folder")],
                                        errors=(404,))},
        "/openapi.json": {"get": _op("This document", ANY_OBJ, errors=())},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "latentgraph", "version": latentgraph_version(), "description": (
            "ComfyUI-compatible API. Every path also answers under /api. WebSocket: /ws?clientId=ID sends "
            "status, execution_start, execution_cached, executing, progress, executed, execution_success, "
            "execution_error and execution_interrupted messages; clients that send a feature_flags message get "
            "binary preview frames (type 4 with metadata when they set supports_preview_metadata, else type 1). "
            "With a token set, send 'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every request.")},
        "servers": [{"url": "/"}, {"url": "/api"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "query": {"type": "apiKey", "in": "query", "name": "token"}}},
        "security": [{"bearer": []}, {"query": []}, {}],
        "paths": paths,
    }


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    spec = build_spec()
    # one typed operation per library workflow (the library changes at run time, so this part is built per request)
    paths, schemas = await asyncio.to_thread(workflow_paths, get_state(request))
    spec["paths"].update(paths)
    spec["components"].setdefault("schemas", {}).update(schemas)
    return web.json_response(spec)
