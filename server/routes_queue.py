"""Queueing and following prompts: /prompt, /queue, /interrupt, /free, /history and /jobs, in ComfyUI's shapes."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web
from latentgraph.engine.validate import validate
from latentgraph.engine.workflow_format import ConversionError, is_ui_format, ui_to_api
from latentgraph.server import api_models as M
from latentgraph.server import webhooks
from latentgraph.server.jsonio import ApiError, id_list, json_answer, query_int, read_object
from latentgraph.server.operations import operation, parse_body
from latentgraph.server.queue import JOB_STATUSES, STORAGE_HINT, DuplicatePromptId, StorageError, now_ms
from latentgraph.server.state import get_state

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
WARM_UP_WAIT_S = 120.0  # how long a prompt arriving during the start-up warm-up waits for it
MAX_HISTORY_PAGE = 1000  # GET /history answers at most this many entries; page with max_items and offset

# What each invalid /prompt field is answered with (the checks themselves are M.PromptRequest's).
PROMPT_ERRORS = {
    "prompt": ("No prompt provided", "the body needs a 'prompt' object: the workflow in API format"),
    "client_id": ("Invalid client_id", "client_id must be a string"),
    "extra_data": ("Invalid extra_data", "extra_data must be an object"),
    "prompt_id": ("Invalid prompt_id", "prompt_id must be 1-128 letters, digits or ._:-"),
    "number": ("Invalid number", f"number must be a number of magnitude below {M.MAX_NUMBER}"),
    "front": ("Invalid front", "front must be true or false"),
    "partial_execution_targets": ("Invalid partial_execution_targets",
                                  "partial_execution_targets must be a list of node ids"),
    "callback_url": ("Invalid callback_url", "callback_url must be a string"),
    "idempotency_key": ("Invalid idempotency_key", "idempotency_key must be 1-200 printable ASCII characters"),
}


def _prompt_error(message: str, details: str, kind: str = "invalid_prompt") -> ApiError:
    return ApiError(400, kind, message, details, node_errors={})


async def accept_ui_workflow(body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """A /prompt body whose `prompt` is an editor workflow, turned into one with the API prompt.

    The editor workflow also goes into `extra_data.extra_pnginfo.workflow`, as the editor itself would send it,
    so that saved PNGs carry the graph. Conversion errors are 400s naming the node.
    """
    prompt = body.get("prompt")
    if not is_ui_format(prompt):
        return body
    state = get_state(request)
    object_info = await asyncio.to_thread(state.object_info)
    try:
        converted = await asyncio.to_thread(ui_to_api, prompt, object_info, max_nodes=state.options.max_prompt_nodes)
    except ConversionError as exc:
        node_errors = {} if exc.node_id is None else {exc.node_id: {
            "errors": [{"type": "invalid_workflow", "message": "Cannot convert the editor workflow",
                        "details": str(exc), "extra_info": {}}],
            "dependent_outputs": [], "class_type": exc.node_type}}
        raise ApiError(400, "invalid_prompt", "Cannot convert the editor workflow", str(exc),
                       node_errors=node_errors) from exc
    extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    pnginfo = extra_data.get("extra_pnginfo") if isinstance(extra_data.get("extra_pnginfo"), dict) else {}
    return {**body, "prompt": converted,
            "extra_data": {**extra_data, "extra_pnginfo": {**pnginfo, "workflow": pnginfo.get("workflow", prompt)}}}


@routes.post("/prompt")
@operation("Validate and queue a workflow", body=M.PromptRequest, response=M.PromptAnswer, errors=(400, 409, 413))
async def post_prompt(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await accept_ui_workflow(await read_object(request, state.options.max_prompt_bytes), request)
    parsed = parse_body(body, M.PromptRequest, PROMPT_ERRORS, kind="invalid_prompt", node_errors={})
    prompt = body["prompt"]
    if len(prompt) > state.options.max_prompt_nodes:
        raise ApiError(413, "too_many_nodes", "The workflow has too many nodes",
                       f"it has {len(prompt)} nodes; this server accepts at most {state.options.max_prompt_nodes}",
                       node_errors={})
    client_id, extra_data, front = parsed.client_id, body.get("extra_data", {}), parsed.front
    key = parsed.idempotency_key or request.headers.get("Idempotency-Key")
    if key is not None and not webhooks.IDEMPOTENCY_KEY.match(key):
        raise _prompt_error("Invalid idempotency key", "1-200 printable ASCII characters")
    callback = parsed.callback_url
    if callback is not None and (problem := webhooks.check_callback_url(callback)) is not None:
        raise _prompt_error("Invalid callback_url", problem)
    prompt_id = parsed.prompt_id if parsed.prompt_id is not None else (
        webhooks.idempotent_id("prompt", key) if key else str(uuid.uuid4()))
    number = body.get("number")  # as sent: an integer stays an integer in the queue's answers
    targets = parsed.partial_execution_targets

    executor = state.executor

    def validate_after_warm_up() -> Any:
        # The start-up warm-up imports diffusers' lazy modules in its own thread; a validation importing them at the
        # same time can see a half-initialised module ("no attribute 'EulerDiscreteScheduler'"). So a prompt that
        # arrives during warm-up waits for it here, in a worker thread: the event loop never waits.
        state.worker.warmed.wait(WARM_UP_WAIT_S)
        return validate(prompt, executor.registry, executor.env, targets or None,
                        time_budget_s=state.options.validation_budget_s)

    try:
        validation = await asyncio.to_thread(validate_after_warm_up)
    except Exception as exc:  # a node's own check raised: report it as the prompt's fault, never as a 500
        log.info("validation raised for a queued prompt: %r", exc)
        raise _prompt_error("Invalid prompt", f"validation failed: {type(exc).__name__}: {exc}"[:1000]) from exc
    if not validation.ok:
        return await json_answer(validation.as_response(), status=400)

    extra_data = {**extra_data, "create_time": now_ms()}
    if client_id:
        extra_data["client_id"] = client_id
    if key:
        extra_data[webhooks.RECORD] = webhooks.request_hash([prompt, callback])
    try:
        item = await asyncio.to_thread(state.queue.add, prompt_id, prompt, extra_data, list(validation.outputs),
                                       front=front, number=number)
    except DuplicatePromptId as exc:
        first = state.queue.lookup(prompt_id) if key else None
        if first is not None and first["prompt"][3].get(webhooks.RECORD) == extra_data[webhooks.RECORD]:
            answer = web.json_response({"prompt_id": prompt_id, "number": first["prompt"][0], "node_errors": {}})
            answer.headers["Idempotent-Replayed"] = "true"
            return answer
        if first is not None:
            raise ApiError(409, "idempotency_key_reused", "The idempotency key was used for a different prompt",
                           "send the same prompt with a key, or use a new key", node_errors={}) from exc
        raise _prompt_error("Duplicate prompt_id", f"a prompt with id {prompt_id!r} is already queued or in "
                            "history", kind="duplicate_prompt_id") from exc
    except StorageError as exc:
        raise ApiError(507, "insufficient_storage", "The server cannot store the prompt", f"{exc}; {STORAGE_HINT}",
                       node_errors={}) from exc
    state.broadcast_status()
    if callback:
        webhooks.call_back_when_done(callback, prompt_id, lambda: webhooks.prompt_result(state.queue, prompt_id))
    return web.json_response({"prompt_id": item.prompt_id, "number": item.as_list()[0], "node_errors": {}})


@routes.get("/prompt")
@operation("Queue size", response=M.QueueStatus, errors=())
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(get_state(request).queue_status())


@routes.get("/queue")
@operation("Running and pending prompts", response=M.QueueListing, errors=())
async def get_queue(request: web.Request) -> web.Response:
    queue = get_state(request).queue
    running, pending = await asyncio.to_thread(lambda: (queue.items("running"), queue.items("pending")))
    return await json_answer({"queue_running": [item.as_list() for item in running],
                              "queue_pending": [item.as_list() for item in pending]})


@routes.post("/queue")
@operation("Clear the pending queue or delete pending prompts", body=M.ClearOrDelete)
async def post_queue(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes)
    if body.get("clear") is True:
        state.queue.delete_pending()
    if "delete" in body:
        state.queue.delete_pending(id_list(body, "delete"))
    state.broadcast_status()
    return web.Response(status=200)


@routes.post("/interrupt")
@operation("Interrupt the running prompt (only prompt_id's, when given)", body=M.InterruptRequest, body_required=False)
async def post_interrupt(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes, allow_empty=True)
    parsed = parse_body(body, M.InterruptRequest, {"prompt_id": ("prompt_id must be a string", "")})
    state.worker.interrupt(parsed.prompt_id)
    return web.Response(status=200)


@routes.post("/free")
@operation("Free cached results and unload models between prompts", body=M.FreeRequest, body_required=False)
async def post_free(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes, allow_empty=True)
    both = ("unload_models and free_memory must be true or false", "")
    parsed = parse_body(body, M.FreeRequest, {"unload_models": both, "free_memory": both})
    state.worker.request_free(cache=parsed.free_memory, models=parsed.unload_models or parsed.free_memory)
    return web.Response(status=200)


@routes.get("/history")
@operation("Finished prompts, oldest first", response=M.History, query=M.HistoryQuery)
async def get_history(request: web.Request) -> web.Response:
    """A page of history, at most MAX_HISTORY_PAGE entries (the newest when no offset is given), read and encoded
    in a thread: 600 large entries made 72 MB of JSON on the event loop."""
    max_items = query_int(request, "max_items", None, minimum=1)
    offset = query_int(request, "offset", None, minimum=-1)
    page = MAX_HISTORY_PAGE if max_items is None else min(max_items, MAX_HISTORY_PAGE)
    queue = get_state(request).queue
    history = await asyncio.to_thread(queue.history, page, None if offset == -1 else offset)
    return await json_answer(history)


@routes.get("/history/{prompt_id}")
@operation("One prompt: finished, or pending/running with that status; {} if unknown", response=M.History, errors=())
async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = get_state(request).queue.lookup(prompt_id)
    return web.json_response({prompt_id: entry} if entry is not None else {})


@routes.post("/history")
@operation("Clear history or delete entries", body=M.ClearOrDelete)
async def post_history(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes)
    if body.get("clear") is True:
        state.queue.delete_history()
    if "delete" in body:
        state.queue.delete_history(id_list(body, "delete"))
    return web.Response(status=200)


@routes.get("/jobs")
@operation("Queue and history as one paginated list of jobs", response=M.JobList, query=M.JobsQuery)
async def get_jobs(request: web.Request) -> web.Response:
    query = request.query
    statuses = None
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        invalid = [s for s in statuses if s not in JOB_STATUSES]
        if invalid:
            raise ApiError(400, "invalid_request", f"Invalid status value(s): {', '.join(invalid)}"[:300],
                           f"valid values: {', '.join(JOB_STATUSES)}")
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in ("created_at", "execution_duration"):
        raise ApiError(400, "invalid_request", "sort_by must be 'created_at' or 'execution_duration'")
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        raise ApiError(400, "invalid_request", "sort_order must be 'asc' or 'desc'")
    limit = query_int(request, "limit", None, minimum=1)
    offset = query_int(request, "offset", 0, minimum=0) or 0
    jobs, total = get_state(request).queue.jobs(statuses, query.get("workflow_id"), sort_by,
                                                sort_order == "desc", limit, offset)
    return web.json_response({"jobs": jobs, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                           "has_more": offset + len(jobs) < total}})


def _job_or_404(request: web.Request) -> dict[str, Any]:
    job_id = request.match_info["job_id"]
    job = get_state(request).queue.job(job_id)
    if job is None:
        raise ApiError(404, "not_found", "Job not found", f"no prompt with id {job_id!r}"[:200])
    return job


@routes.get("/jobs/{job_id}")
@operation("One job with its outputs and workflow", response=M.Job, errors=(404,))
async def get_job(request: web.Request) -> web.Response:
    state = get_state(request)
    job = _job_or_404(request)
    running = state.worker.current
    if running is not None and running.item.prompt_id == job["id"] and running.progress is not None:
        job["progress"] = running.progress
    return web.json_response(job)


@routes.post("/jobs/{job_id}/cancel")
@operation("Cancel a pending job or interrupt a running one", response=M.CancelAnswer, errors=(404, 409))
async def cancel_job(request: web.Request) -> web.Response:
    """Ends a job wherever it is: a pending one leaves the queue, a running one is interrupted."""
    state = get_state(request)
    job = _job_or_404(request)
    if job["status"] == "pending" and state.queue.delete_pending([job["id"]]):
        state.broadcast_status()
        return web.json_response({"id": job["id"], "status": "cancelled"})
    if state.worker.interrupt(job["id"]):
        return web.json_response({"id": job["id"], "status": "interrupting"})
    raise ApiError(409, "not_cancellable", "The job has already finished", f"its status is {job['status']}")
