"""What the integration doors (OpenAI Images under /v1, AUTOMATIC1111's sdapi/v1) share: which library workflow a
request runs, queueing it like any other run, and reading back its images.

A door never builds a pipeline: it picks a library workflow (by name, or by an alias from the mapping file), turns
the request's fields into that workflow's declared inputs, and queues the bound prompt on the server's one queue,
exactly as `POST /workflows/{name}/runs` does. So a request from any door is in /queue, /history and /jobs, uses
the cache, and WebSocket watchers see its progress.

The mapping file: `server/door_models.json` ships the defaults; `user/default/door_models.json` under the base
directory overrides any of its keys (`aliases`: model name -> workflow; `openai`/`sdapi`: door task -> workflow).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentgraph.engine.library import Interface, InterfaceError, WorkflowNotFound, WorkflowVersion, extract_interface
from latentgraph.engine.library import prepare as prepare_values
from latentgraph.server.files import folder_root, safe_path
from latentgraph.server.queue import now_ms
from latentgraph.server.routes_workflows import FINISHED, RUN_KEY, library_for
from latentgraph.server.state import ServerState

SHIPPED_MAPPING = Path(__file__).with_name("door_models.json")
USER_MAPPING = Path("default") / "door_models.json"
POLL_S = 0.05
RUN_TIMEOUT_S = 600.0


class DoorError(Exception):
    """A request a door refuses; each door renders it in its own error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def mapping(state: ServerState) -> dict[str, Any]:
    """The shipped mapping with the user's file laid over it key by key (a broken user file is an error, not
    silently ignored, so a typo does not quietly run another workflow)."""
    merged: dict[str, Any] = json.loads(SHIPPED_MAPPING.read_text(encoding="utf-8"))
    user = state.executor.env.folders.user_dir / USER_MAPPING
    if user.is_file():
        try:
            overlay = json.loads(user.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DoorError(500, f"{user}: not valid JSON ({exc})", code="bad_mapping") from exc
        for key, value in overlay.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


@dataclass(frozen=True)
class Chosen:
    """A library workflow picked for a request, with its declared interface."""

    version: WorkflowVersion
    interface: Interface


def choose(state: ServerState, model: str | None, task: str, door: str) -> Chosen:
    """The workflow for `model` (a workflow name or an alias), else the door's default for `task`."""
    table = mapping(state)
    ref = table.get("aliases", {}).get(model, model) if model else table.get(door, {}).get(task)
    if not ref:
        raise DoorError(400, f"no workflow is mapped to the task {task!r} of this door", "model", "model_not_found")
    try:
        version = library_for(state).get(ref)
    except WorkflowNotFound as exc:
        raise DoorError(404, str(exc.args[0] if exc.args else exc)[:500], "model", "model_not_found") from exc
    try:
        interface = extract_interface(version.prompt, state.executor.registry, state.executor.env)
    except InterfaceError as exc:
        raise DoorError(409, f"workflow {version.name!r} declares an invalid interface: {exc}"[:1000], "model",
                        "invalid_workflow") from exc
    return Chosen(version, interface)


def image_outputs(interface: Interface) -> list[str]:
    """The declared outputs that are files of an output node (what a door can send back as images)."""
    return [name for name, out in interface.outputs.items() if out.index is None]


def queue_run(state: ServerState, chosen: Chosen, values: dict[str, Any], door: str,
              client_id: str | None = None) -> str:
    """Binds and validates `values` (declared input names) and queues the run as routes_workflows does; a value
    the workflow refuses is a DoorError naming that input (`param`)."""
    executor = state.executor
    try:
        prepared = prepare_values(chosen.version.prompt, chosen.interface, values, executor.registry, executor.env)
    except Exception as exc:  # a node's own check raised: the request's fault, as /prompt reports it
        raise DoorError(400, f"validation failed: {type(exc).__name__}: {exc}"[:1000], None, "invalid_value") from exc
    if not prepared.ok:
        param = next(iter(prepared.input_errors), None)
        raise DoorError(400, prepared.summary()[:2000], param, "invalid_value")
    run_id = str(uuid.uuid4())
    outputs = {name: out.node for name, out in chosen.interface.outputs.items() if out.index is None}
    extra_data: dict[str, Any] = {"create_time": now_ms(), RUN_KEY: {
        "name": chosen.version.name, "version": chosen.version.version, "hash": chosen.version.hash,
        "outputs": outputs, "door": door}}
    if client_id:
        extra_data["client_id"] = client_id
    state.queue.add(run_id, prepared.prompt, extra_data, list(prepared.validation.outputs))
    state.broadcast_status()
    return run_id


async def finish(state: ServerState, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The job once it has finished; a failed, cancelled, removed or timed-out run is a DoorError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job = state.queue.job(run_id)
    while job is not None and job["status"] not in FINISHED and loop.time() < deadline:
        await asyncio.sleep(POLL_S)
        job = state.queue.job(run_id)
    if job is None:
        raise DoorError(410, f"run {run_id} was removed from the queue", None, "run_gone")
    if job["status"] == "cancelled":
        raise DoorError(409, f"run {run_id} was cancelled or interrupted", None, "cancelled")
    if job["status"] == "failed":
        error = job.get("execution_error") or {}
        raise DoorError(500, f"run {run_id} failed: {error.get('exception_message', 'unknown error')}"[:1000],
                        None, "run_failed")
    if job["status"] not in FINISHED:
        raise DoorError(504, f"run {run_id} did not finish within {timeout:g} s", None, "timeout")
    return job


def files_of(job: dict[str, Any], chosen: Chosen) -> list[dict[str, Any]]:
    """The file records ({filename, subfolder, type}) of the job's declared image outputs, in order."""
    node_outputs = job.get("outputs") or {}
    found: list[dict[str, Any]] = []
    for name in image_outputs(chosen.interface):
        node = chosen.interface.outputs[name].node
        for items in (node_outputs.get(node) or {}).values():
            if isinstance(items, list):
                found.extend(item for item in items if isinstance(item, dict) and "filename" in item)
    return found


def read_file(state: ServerState, item: dict[str, Any]) -> bytes:
    """The bytes of an output file record, through the same path checks as /view."""
    root = folder_root(state.executor.env.folders, item.get("type", "output"))
    return safe_path(root, item.get("subfolder", ""), item["filename"]).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def store_input_image(state: ServerState, data: bytes, stem: str) -> str:
    """Writes an uploaded image into the input folder as PNG (named by content) and returns its name, for a
    workflow's LoadImage input."""
    import hashlib
    import io

    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many kinds for bad data
        raise DoorError(400, f"the {stem} is not a readable image ({type(exc).__name__})", stem,
                        "invalid_image") from exc
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png = buffer.getvalue()
    name = f"door_{stem}_{hashlib.sha256(png).hexdigest()[:16]}.png"
    folder = state.executor.env.folders.input_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        path.write_bytes(png)
    return name
