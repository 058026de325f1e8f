"""Library workflows over HTTP: list them with their JSON Schemas, run one with named inputs, follow the run.

- `GET /workflows`: names, versions, descriptions, JSON Schema of inputs and outputs.
- `GET /workflows/{name}`: one workflow, with every recorded version.
- `POST /workflows/{name}/runs` (`name` may be pinned, `NAME@VERSION`, or `?version=`): the body is a JSON object
  of named inputs. They are validated like `/prompt`, but errors come back by input name (`input_errors`); nothing
  is queued then. Otherwise the run is queued like any prompt (same queue, cache, history, WebSocket events for
  `?client_id=`) and the answer is 202 with the run's id, or 200 with the finished run when `?wait=SECONDS` is given
  and it finishes within that time.
- `GET /workflows/{name}/runs/{run_id}`: status, progress of the running node, outputs by declared output name
  with `/view` URLs, the error if it failed.
- `?callback=URL` on a run: the finished run's JSON is POSTed there, retried with backoff until a 2xx answer
  (server.webhooks). An `Idempotency-Key` header (or `?idempotency_key=`) makes a repeated request return the
  first run (header `Idempotent-Replayed: true`) instead of queueing again, for as long as that run is in the
  queue or history; the same key with different inputs is a 409.

`workflow_paths` gives `/openapi.json` one operation per workflow, each with its own request schema, so a client
generated from the document gets a typed method per workflow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from latentgraph.engine.library import (
    InterfaceError,
    Library,
    WorkflowNotFound,
    WorkflowVersion,
    content_hash,
    describe,
    extract_interface,
    prepare,
)
from latentgraph.engine.workflow_format import ui_to_api
from latentgraph.nodes.workflow_nodes import register_workflow_nodes
from latentgraph.server.jsonio import ApiError, json_answer, read_object
from latentgraph.server.queue import DuplicatePromptId, now_ms
from latentgraph.server.state import ServerState, get_state
from latentgraph.server.webhooks import IDEMPOTENCY_KEY, call_back_when_done, check_callback_url, idempotent_id

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

WORKFLOWS_ENV = "LATENTGRAPH_WORKFLOWS"
MAX_WAIT_S = 600.0
POLL_S = 0.05
RUN_KEY = "workflow_run"  # where a run's name, version and output map live in the queue item's extra_data
FINISHED = ("completed", "failed", "cancelled")
OPERATION_ID = re.compile(r"[^A-Za-z0-9_]")


def library_for(state: ServerState) -> Library:
    """The library of the server's base directory, plus the folders in $LATENTGRAPH_WORKFLOWS."""
    extra = [Path(p) for p in os.environ.get(WORKFLOWS_ENV, "").split(os.pathsep) if p]
    object_info = cache(state.object_info)
    return Library.for_environment(state.executor.env, extra, to_api=lambda doc: ui_to_api(doc, object_info()))


def _listing(state: ServerState, names: list[str] | None = None) -> list[dict[str, Any]]:
    library = library_for(state)
    current = library.scan()
    register_workflow_nodes(state.executor.registry, state.executor.env, library)  # the editor's nodes follow
    entries = []
    for name in names if names is not None else sorted(current):
        version = current[name]
        try:
            interface, error = extract_interface(version.prompt, state.executor.registry, state.executor.env), None
        except InterfaceError as exc:
            interface, error = None, str(exc)
        entries.append(describe(version, interface, error, library.versions(name) if names is not None else ()))
    return entries


@routes.get("/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    return await json_answer(await asyncio.to_thread(_listing, get_state(request)))


def _not_found(exc: LookupError) -> ApiError:
    return ApiError(404, "workflow_not_found", "Workflow not found", str(exc.args[0] if exc.args else exc)[:1000])


def _resolve(state: ServerState, ref: str) -> WorkflowVersion:
    try:
        return library_for(state).get(ref)
    except WorkflowNotFound as exc:
        raise _not_found(exc) from exc


def _query_wait(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None or raw == "":
        return 0.0
    if raw.lower() == "true":
        return MAX_WAIT_S
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_S:  # also refuses nan
        raise ApiError(400, "invalid_request", "Invalid wait", f"wait must be seconds from 0 to {MAX_WAIT_S:g}")
    return wait


def _ref(request: web.Request) -> str:
    name = request.match_info["name"]
    version = request.query.get("version")
    if version:
        if "@" in name:
            raise ApiError(400, "invalid_request", "Version given twice", "pin in the path or in ?version=, not both")
        return f"{name}@{version}"
    return name


def _file_url(item: dict[str, Any]) -> str:
    query = {"filename": item.get("filename", ""), "subfolder": item.get("subfolder", ""),
             "type": item.get("type", "output")}
    return "/api/view?" + urlencode(query)


def run_view(state: ServerState, job: dict[str, Any]) -> dict[str, Any]:
    """A queued prompt as a workflow run: status, progress, outputs by declared name with URLs, error."""
    run = (job.get("workflow", {}).get("extra_data") or {}).get(RUN_KEY) or {}
    view: dict[str, Any] = {"id": job["id"], "workflow": run.get("name"), "version": run.get("version"),
                            "status": job["status"], "progress": None, "outputs": {}, "error": None}
    running = state.worker.current
    if running is not None and running.item.prompt_id == job["id"] and running.progress is not None:
        view["progress"] = {k: running.progress.get(k) for k in ("value", "max", "node")}
    node_outputs = job.get("outputs") or {}
    for name, node_id in (run.get("outputs") or {}).items():
        files = [item for items in (node_outputs.get(node_id) or {}).values() if isinstance(items, list)
                 for item in items if isinstance(item, dict) and "filename" in item]
        view["outputs"][name] = [{**item, "url": _file_url(item)} for item in files]
    error = job.get("execution_error")
    if error:
        view["error"] = {k: error.get(k) for k in ("node_id", "node_type", "exception_message", "exception_type")}
    return view


def _job_of_run(state: ServerState, name: str, run_id: str) -> dict[str, Any]:
    job = state.queue.job(run_id)
    run = ((job or {}).get("workflow", {}).get("extra_data") or {}).get(RUN_KEY) or {}
    if job is None or run.get("name") != name.partition("@")[0]:
        raise ApiError(404, "run_not_found", "Run not found", f"no run {run_id!r} of workflow {name!r}"[:300])
    return job


@routes.post("/workflows/{name:.+?}/runs")
async def post_run(request: web.Request) -> web.Response:
    state = get_state(request)
    wait = _query_wait(request)
    client_id = request.query.get("client_id") or None
    key = request.headers.get("Idempotency-Key") or request.query.get("idempotency_key") or None
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid_request", "Invalid idempotency key", "1-200 printable ASCII characters")
    callback = request.query.get("callback") or None
    if callback is not None and (problem := check_callback_url(callback)) is not None:
        raise ApiError(400, "invalid_request", "Invalid callback URL", problem)
    values = await read_object(request, state.options.max_json_bytes, allow_empty=True)
    version = await asyncio.to_thread(_resolve, state, _ref(request))
    executor = state.executor

    def check() -> Any:
        interface = extract_interface(version.prompt, executor.registry, executor.env)
        return interface, prepare(version.prompt, interface, values, executor.registry, executor.env)

    try:
        interface, prepared = await asyncio.to_thread(check)
    except InterfaceError as exc:
        raise ApiError(409, "invalid_workflow", "The workflow's declarations are invalid", str(exc)[:2000]) from exc
    except Exception as exc:  # a node's own check raised: the request's fault as /prompt reports it, never a 500
        log.info("validation raised for a workflow run: %r", exc)
        raise ApiError(400, "invalid_prompt", "Invalid prompt",
                       f"validation failed: {type(exc).__name__}: {exc}"[:1000]) from exc
    if not prepared.ok:
        return await json_answer(prepared.as_response(), status=400)

    # With an idempotency key the run id is derived from it: a second request with the key finds the first run
    # (the queue refuses a duplicate id), for as long as that run is in the queue or history.
    request_hash = content_hash({"inputs": values, "version": version.hash, "callback": callback})
    run_id = idempotent_id(version.name, key) if key else str(uuid.uuid4())
    outputs = {name: out.node for name, out in interface.outputs.items() if out.index is None}
    extra_data: dict[str, Any] = {"create_time": now_ms(), RUN_KEY: {
        "name": version.name, "version": version.version, "hash": version.hash, "outputs": outputs,
        "request": request_hash}}
    if client_id:
        extra_data["client_id"] = client_id
    replayed = False
    try:
        state.queue.add(run_id, prepared.prompt, extra_data, list(prepared.validation.outputs))
    except DuplicatePromptId as exc:
        first = state.queue.job(run_id)
        first_run = ((first or {}).get("workflow", {}).get("extra_data") or {}).get(RUN_KEY) or {}
        if first_run.get("request") != request_hash:
            raise ApiError(409, "idempotency_key_reused", "The idempotency key was used for a different request",
                           "send the same inputs (and version and callback) with a key, or use a new key") from exc
        replayed = True
    else:
        state.broadcast_status()
        if callback:
            call_back_when_done(callback, run_id, lambda: _finished_view(state, run_id))

    deadline = time.monotonic() + wait
    job = state.queue.job(run_id)
    while job is not None and job["status"] not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        job = state.queue.job(run_id)
    if job is None:  # deleted from the queue meanwhile
        raise ApiError(410, "run_gone", "The run was removed from the queue", run_id)
    answer = await json_answer(run_view(state, job), status=200 if job["status"] in FINISHED else 202)
    if replayed:
        answer.headers["Idempotent-Replayed"] = "true"
    return answer


def _finished_view(state: ServerState, run_id: str) -> dict[str, Any] | None:
    """The run's JSON once it has finished, None while it has not; LookupError when it left the queue unrun."""
    job = state.queue.job(run_id)
    if job is None:
        raise LookupError(run_id)
    return run_view(state, job) if job["status"] in FINISHED else None


@routes.get("/workflows/{name:.+?}/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    state = get_state(request)
    job = await asyncio.to_thread(_job_of_run, state, request.match_info["name"], request.match_info["run_id"])
    return await json_answer(run_view(state, job))


@routes.get("/workflows/{name:.+}")
async def get_workflow(request: web.Request) -> web.Response:
    state = get_state(request)
    name = request.match_info["name"]

    def one() -> list[dict[str, Any]]:
        current = library_for(state).scan()
        if name not in current:
            raise _not_found(WorkflowNotFound(f"no workflow named {name!r} (workflows: {', '.join(sorted(current))})"))
        return _listing(state, [name])

    return await json_answer((await asyncio.to_thread(one))[0])


# -- OpenAPI ---------------------------------------------------------------------------------------------------


def _schema_refs() -> dict[str, Any]:
    file_ref = {"type": "object", "properties": {"url": {"type": "string"}, "filename": {"type": "string"},
                                                 "subfolder": {"type": "string"}, "type": {"type": "string"}}}
    run = {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "workflow": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "failed", "cancelled"]},
        "progress": {"type": ["object", "null"]},
        "outputs": {"type": "object", "additionalProperties": {"type": "array", "items": file_ref}},
        "error": {"type": ["object", "null"]}}}
    errors = {"type": "object", "properties": {
        "error": {"type": "object"}, "input_errors": {"type": "object", "additionalProperties": {"type": "array"}},
        "node_errors": {"type": "object"}}}
    return {"WorkflowRun": run, "WorkflowInputErrors": errors}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    answers: dict[str, Any] = {
        "200": {"description": "the finished run (with wait) or the entry",
                "content": {"application/json": {"schema": ok}}}}
    for code in codes:
        answers[str(code)] = {"description": {202: "queued (or still running after wait)", 400: "invalid inputs",
                                              404: "not found", 409: "invalid declarations"}[code],
                              "content": {"application/json": {"schema": ok if code == 202 else {"type": "object"}}}}
    return answers


def workflow_paths(state: ServerState) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) for /openapi.json: the generic workflow routes plus one typed run operation per
    library workflow, whose request body is that workflow's input schema."""
    run_ref = {"$ref": "#/components/schemas/WorkflowRun"}
    query = [{"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0,
              "maximum": MAX_WAIT_S}, "description": "seconds to wait for the result in this request"},
             {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "pin a version: a content-hash prefix or the human version"},
             {"name": "client_id", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "WebSocket clientId that receives the run's events"},
             {"name": "callback", "in": "query", "required": False, "schema": {"type": "string", "format": "uri"},
              "description": "URL POSTed the finished run (retried with backoff until it answers 2xx)"},
             {"name": "idempotency_key", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "same as the Idempotency-Key header: a repeated key returns the first run"},
             {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "a repeated key (same inputs) returns the first run instead of queueing again"}]
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/workflows": {"get": {"summary": "Library workflows: versions and JSON Schemas of inputs and outputs",
                               "operationId": "list_workflows", "responses": _responses({"type": "array"})}},
        "/workflows/{name}": {"get": {"summary": "One library workflow with its recorded versions",
                                      "operationId": "get_workflow", "parameters": [name_param],
                                      "responses": _responses({"type": "object"}, 404)}},
        "/workflows/{name}/runs/{run_id}": {"get": {
            "summary": "A workflow run: status, progress, outputs with URLs", "operationId": "get_workflow_run",
            "parameters": [name_param, {"name": "run_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
            "responses": _responses(run_ref, 404)}},
    }
    schemas = _schema_refs()
    for entry in _listing(state):
        if "inputs" not in entry:
            continue
        name = entry["name"]
        schema_name = "Inputs_" + OPERATION_ID.sub("_", name)
        schemas[schema_name] = entry["inputs"]
        label = f" (version {entry['label']})" if entry["label"] else ""
        paths[f"/workflows/{name}/runs"] = {"post": {
            "summary": f"Run {name}{label}" + (f": {entry['description']}" if entry["description"] else ""),
            "operationId": "run_" + OPERATION_ID.sub("_", name), "tags": ["workflows"], "parameters": query,
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}},
            "responses": {**_responses(run_ref, 202, 400, 409),
                          "400": {"description": "invalid inputs, by input name", "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/WorkflowInputErrors"}}}}}}}
    return paths, schemas
