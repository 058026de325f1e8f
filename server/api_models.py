"""The HTTP API's request and response bodies, declared once as pydantic models.

Each route names its models with `server.operations.operation`; `/openapi.json` is generated from them, and the
tests validate real answers against the response models, so a body that drifts from its declaration fails.
Shapes are ComfyUI's (clients such as comfy-api-simplified depend on them): objects stay open to extra keys
(`extra="allow"`) where ComfyUI adds fields over time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

MAX_NUMBER = 2**53  # a queue number must survive a round trip through JavaScript


class Open(BaseModel):
    """An object that may carry keys beyond the declared ones (ComfyUI grows its payloads)."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- errors


class ErrorDetail(Open):
    type: str
    message: str
    details: str = ""


class ErrorBody(Open):
    """Every 4xx/5xx answer: `{"error": {type, message, details}}`, plus `node_errors` on an invalid prompt."""

    error: ErrorDetail
    node_errors: dict[str, Any] | None = None


class Empty(BaseModel):
    """`{}`: the answer of routes that only acknowledge."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- prompts and the queue


class PromptRequest(Open):
    """Checked strictly (no coercion: "1" is not a number, 1 is not true), in this field order."""

    prompt: dict[str, Any] = Field(description="the workflow: API format {node_id: {class_type, inputs}}, or an "
                                               "editor (UI-format) workflow, converted on arrival")
    client_id: str | None = Field(None, description="WebSocket clientId that receives this prompt's events")
    extra_data: dict[str, Any] = Field(default_factory=dict)
    prompt_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    number: float | None = Field(None, gt=-MAX_NUMBER, lt=MAX_NUMBER, description="queue position; lower runs first")
    front: bool = Field(False, description="queue ahead of every pending prompt")
    partial_execution_targets: list[str] | None = Field(None, description="run only these output nodes")
    callback_url: str | None = Field(None, description="URL POSTed the finished prompt's history entry, retried "
                                                   "with backoff until it answers 2xx")
    idempotency_key: str | None = Field(None, pattern=r"^[\x21-\x7e]{1,200}$", description=(
        "a repeated key (same prompt) returns the first prompt instead of queueing again; also the "
        "Idempotency-Key header"))


class PromptAnswer(Open):
    prompt_id: str
    number: float
    node_errors: dict[str, Any]


class ExecInfo(Open):
    queue_remaining: int


class QueueStatus(Open):
    exec_info: ExecInfo


# [number, prompt_id, prompt, extra_data, outputs_to_execute]: a JSON array of fixed shape (prefixItems).
QueueItem = tuple[float, str, dict[str, Any], dict[str, Any], list[str]]


class QueueListing(Open):
    queue_running: list[QueueItem]
    queue_pending: list[QueueItem]


class ClearOrDelete(Open):
    clear: bool = Field(False, description="remove every entry")
    delete: list[str] | None = Field(None, description="remove these prompt ids")


class InterruptRequest(Open):
    prompt_id: str | None = Field(None, description="interrupt only if this prompt is the running one")


class FreeRequest(Open):
    unload_models: bool = False
    free_memory: bool = False


class HistoryStatus(Open):
    status_str: Literal["success", "error", "pending", "running"] | None = None
    completed: bool
    messages: list[Any]


class HistoryEntry(Open):
    prompt: QueueItem
    outputs: dict[str, Any]
    status: HistoryStatus
    meta: dict[str, Any]


History = RootModel[dict[str, HistoryEntry]]


class HistoryQuery(BaseModel):
    max_items: int | None = Field(None, ge=1, description="at most this many entries")
    offset: int | None = Field(None, ge=-1, description="skip this many oldest entries (-1: none)")

JobStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled"]


class Job(Open):
    id: str
    status: JobStatus
    priority: float | None = None
    create_time: int | None = None
    execution_start_time: int | None = None
    execution_end_time: int | None = None
    execution_error: dict[str, Any] | None = None
    outputs_count: int | None = None
    preview_output: dict[str, Any] | None = None
    workflow_id: str | None = None
    outputs: dict[str, Any] | None = Field(None, description="GET /jobs/{job_id} only")
    execution_status: dict[str, Any] | None = Field(None, description="GET /jobs/{job_id} only")
    workflow: dict[str, Any] | None = Field(None, description="GET /jobs/{job_id} only: prompt and extra_data")
    progress: dict[str, Any] | None = Field(None, description="GET /jobs/{job_id} of the running job")


class Pagination(Open):
    offset: int
    limit: int | None
    total: int
    has_more: bool


class JobList(Open):
    jobs: list[Job]
    pagination: Pagination


class JobsQuery(BaseModel):
    status: str | None = Field(None, description="comma-separated: pending, in_progress, completed, failed, cancelled")
    workflow_id: str | None = None
    sort_by: Literal["created_at", "execution_duration"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    limit: int | None = Field(None, ge=1)
    offset: int = Field(0, ge=0)


class CancelAnswer(Open):
    id: str
    status: Literal["cancelled", "interrupting"]


class Estimate(Open):
    """POST /prompt/estimate: what would run and how long it should take (engine.Executor.estimate)."""

    device: str | None = None
    nodes: list[dict[str, Any]]
    run: list[str]
    cached: list[str]
    total_ms: float
    unknown: list[str]
    complete: bool
    queue_ahead: int


class NodeTiming(Open):
    class_type: str
    device: str | None
    count: int
    mean_ms: float
    max_peak_bytes: int | None


# ---------------------------------------------------------------- files


class ViewQuery(BaseModel):
    filename: str
    type: Literal["output", "input", "temp"] = "output"
    subfolder: str = ""
    preview: str | None = Field(None, description="re-encode as 'webp;90' or 'jpeg;90'")
    channel: Literal["rgba", "rgb", "a"] = "rgba"


class UploadForm(BaseModel):
    image: bytes = Field(json_schema_extra={"format": "binary"})
    type: Literal["input", "temp", "output"] = "input"
    subfolder: str = ""
    overwrite: str | None = Field(None, description="'true' replaces a file of the same name")


class MaskUploadForm(UploadForm):
    original_ref: str = Field(description="JSON {filename, subfolder, type} of the image the mask applies to")


class UploadAnswer(Open):
    name: str
    subfolder: str
    type: str


# ---------------------------------------------------------------- what the server knows and has

ObjectInfo = RootModel[dict[str, dict[str, Any]]]
StringList = RootModel[list[str]]


class SystemInfo(Open):
    os: str
    ram_total: int
    ram_free: int
    comfyui_version: str
    python_version: str
    pytorch_version: str
    embedded_python: bool
    argv: list[str]


class DeviceInfo(Open):
    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


class SystemStats(Open):
    system: SystemInfo
    devices: list[DeviceInfo]


class WorkerInfo(Open):
    """One execution worker: the in-process thread, or a Ray actor under `serve --ray`."""

    id: int
    alive: bool
    pid: int | None
    restarts: int = Field(description="times Ray restarted this worker after it died or hung")
    current_prompt: str | None
    progress: dict[str, Any] | None
    queue: int = Field(description="pending prompts waiting for this worker because it holds their models")
    models: list[str] = Field(description="model files (paths) its model manager holds")
    cache_bytes: int
    cache_entries: int
    prompts_done: int | None = Field(description="prompts this worker process ran (Ray workers only)")
    threads: int | None
    shared: dict[str, int] = Field(description="shared cache tier counts: object_hits, disk_hits, published")


class Workers(Open):
    backend: Literal["thread", "ray"]
    ready: bool = Field(description="false while the Ray workers are starting")
    error: str | None = Field(description="why the Ray workers could not start, if they could not")
    workers: list[WorkerInfo]


class Features(Open):
    supports_preview_metadata: bool
    max_upload_size: int


class ModelFolder(Open):
    name: str
    folders: list[str]


class ModelFile(Open):
    name: str
    pathIndex: int


# ---------------------------------------------------------------- the editor's user state


class Users(Open):
    storage: Literal["server"]
    migrated: bool


class UserFileInfo(Open):
    path: str
    size: int
    modified: float
    created: float


class UserDataQuery(BaseModel):
    dir: str | None = Field(None, description="a folder inside the user folder")
    recurse: bool = False
    full_info: bool = False
    split: bool = False


class UserDataWriteQuery(BaseModel):
    overwrite: bool | None = Field(None, description="replace an existing file (default: true on write, false on "
                                                     "move)")
    full_info: bool = False


# GET /userdata: names, [path, *parts] when split=true, or file infos when full_info=true.
UserDataListing = RootModel[list[str] | list[list[str]] | list[UserFileInfo]]
UserFileWritten = RootModel[str | UserFileInfo]
Settings = RootModel[dict[str, Any]]
AnyJson = RootModel[Any]
