"""The OpenAI Images API under /v1, backed by library workflows: point an OpenAI SDK (or Open WebUI, LibreChat) at
`http://HOST:PORT/v1` with the server token as API key.

- `POST /v1/images/generations`: prompt, n, size `WxH`, response_format `b64_json` | `url`, model (a library
  workflow name or an alias from the door mapping, server.doors); extension fields `seed`, `steps` and
  `negative_prompt`. Each field becomes a declared input of the workflow (prompt, width/height, seed, steps,
  negative); a field the workflow does not declare is refused, not dropped. `n` images are `n` runs with seeds
  seed, seed+1, ... (a random seed when none is given, as OpenAI's answers differ from call to call).
- `POST /v1/images/edits` (multipart): image, optional mask (its transparent pixels mark what to change, as in
  OpenAI's API) -> the mapped img2img workflow, or the inpaint one when a mask is given; `size` resizes the image.
- `GET /v1/models`: the library workflows that can serve as image models (declare `prompt` and an image output).

Errors come back in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the SDKs raise their
own exceptions (a bad size is `openai.BadRequestError`). Auth is the server's own middleware: the token as Bearer.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import time
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web
from latentgraph.server import doors
from latentgraph.server.doors import Chosen, DoorError
from latentgraph.server.jsonio import read_body
from latentgraph.server.operations import operation
from latentgraph.server.state import ServerState, get_state
from pydantic import BaseModel, ConfigDict, Field, ValidationError

routes = web.RouteTableDef()

SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
MAX_N = 10
SEED_MAX = 2**32 - 1


class ImageGenerationRequest(BaseModel):
    """OpenAI's body, plus the extension fields `seed`, `steps` and `negative_prompt`; OpenAI fields that have no
    meaning here (quality, style, user, background...) are accepted and ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. 64x64; 'auto' or absent keeps the workflow's")
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = Field(None, ge=0, le=2**53, description="extension: the first image's seed")
    steps: int | None = Field(None, ge=1, le=10000, description="extension: sampling steps")
    negative_prompt: str | None = Field(None, description="extension: what to keep out of the image")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class OpenAIError(web.HTTPException):
    """An error in OpenAI's shape (the server's JSON error middleware passes JSON errors through unchanged)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None) -> None:
        self.status_code = status
        kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        super().__init__(text=json.dumps(body), content_type="application/json")


def _door_error(exc: DoorError) -> OpenAIError:
    return OpenAIError(exc.status, exc.message, exc.param, exc.code)


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"Invalid value for {param}: {first['msg']}", param, "invalid_value") from exc


def _size(size: str | None) -> tuple[int, int] | None:
    if size is None or size.strip().lower() == "auto":
        return None
    match = SIZE.match(size)
    if match is None:
        raise OpenAIError(400, f"Invalid size {size!r}: expected WIDTHxHEIGHT, e.g. 64x64", "size", "invalid_size")
    return int(match.group(1)), int(match.group(2))


def _values(chosen: Chosen, req: ImageGenerationRequest, size: tuple[int, int] | None,
            with_size: bool = True) -> dict[str, Any]:
    """The request's fields as the workflow's declared inputs; a field the workflow cannot take is a 400."""
    declared = chosen.interface.inputs
    fields: dict[str, tuple[str, Any]] = {"prompt": ("prompt", req.prompt)}
    if req.negative_prompt is not None:
        fields["negative_prompt"] = ("negative", req.negative_prompt)
    if req.steps is not None:
        fields["steps"] = ("steps", req.steps)
    if size is not None and with_size:
        fields["size"] = ("width", size[0])
        fields["size "] = ("height", size[1])
    values: dict[str, Any] = {}
    for field_name, (input_name, value) in fields.items():
        if input_name not in declared:
            raise OpenAIError(400, f"model {chosen.version.name!r} has no input {input_name!r}, so "
                                   f"{field_name.strip()!r} cannot be set", field_name.strip(), "unsupported_parameter")
        values[input_name] = value
    return values


def _errors_as_params(exc: DoorError) -> DoorError:
    """Input names in a refusal become the request fields that set them (width/height -> size)."""
    param = {"width": "size", "height": "size", "negative": "negative_prompt"}.get(exc.param or "", exc.param)
    return DoorError(exc.status, exc.message, param, exc.code)


def _resized(data: bytes, size: tuple[int, int] | None) -> bytes:
    """The PNG at `size` (for a workflow that picks its own output size, as img2img's does)."""
    from PIL import Image

    picture: Image.Image = Image.open(io.BytesIO(data))
    if size is None or picture.size == size:
        return data
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue()


async def _run_all(request: web.Request, state: ServerState, chosen: Chosen, values: dict[str, Any],
                   req: ImageGenerationRequest, door: str, resize_to: tuple[int, int] | None = None) -> web.Response:
    """Queues `n` runs (seed, seed+1, ...) and answers with their images in OpenAI's shape; `resize_to` scales
    b64 answers of a workflow that has no size inputs to the requested size (a `url` names the file as made)."""
    seeded = "seed" in chosen.interface.inputs
    if req.seed is not None and not seeded:
        raise OpenAIError(400, f"model {chosen.version.name!r} has no input 'seed'", "seed", "unsupported_parameter")
    if req.n > 1 and not seeded:
        raise OpenAIError(400, f"model {chosen.version.name!r} has no seed input, so n > 1 would repeat one image",
                          "n", "unsupported_parameter")
    first_seed = req.seed if req.seed is not None else random.randint(0, SEED_MAX)
    client_id = request.query.get("client_id") or None
    run_ids = []
    try:
        for index in range(req.n):
            one = {**values, "seed": first_seed + index} if seeded else values
            run_ids.append(await asyncio.to_thread(doors.queue_run, state, chosen, one, door, client_id))
        jobs = [await doors.finish(state, run_id) for run_id in run_ids]
    except DoorError as exc:
        raise _door_error(_errors_as_params(exc)) from exc
    data: list[dict[str, Any]] = []
    base = f"{request.scheme}://{request.host}"
    for job in jobs:
        for item in doors.files_of(job, chosen):
            if req.response_format == "url":
                query = {k: item.get(k, "") for k in ("filename", "subfolder", "type")}
                data.append({"url": f"{base}/api/view?{urlencode(query)}", "revised_prompt": None})
            else:
                raw = await asyncio.to_thread(doors.read_file, state, item)
                if resize_to is not None:
                    raw = await asyncio.to_thread(_resized, raw, resize_to)
                data.append({"b64_json": doors.b64(raw), "revised_prompt": None})
    if not data:
        raise OpenAIError(500, f"model {chosen.version.name!r} produced no image", None, "no_image")
    return web.json_response({"created": int(time.time()), "data": data})


def _choose(state: ServerState, model: str | None, task: str) -> Chosen:
    try:
        return doors.choose(state, model, task, "openai")
    except DoorError as exc:
        raise _door_error(exc) from exc


@routes.post("/v1/images/generations")
@operation("OpenAI Images: generate images with a library workflow", body=ImageGenerationRequest,
           response=ImagesResponse, errors=(400, 404, 409, 500), tags=("openai",))
async def images_generations(request: web.Request) -> web.Response:
    state = get_state(request)
    raw = await read_body(request, state.options.max_json_bytes)
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}"[:300], None, "invalid_json") from exc
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object", None, "invalid_json")
    req = _parse(ImageGenerationRequest, body)
    size = _size(req.size)
    chosen = await asyncio.to_thread(_choose, state, req.model, "generations")
    return await _run_all(request, state, chosen, _values(chosen, req, size), req, "openai")


def _edit_image(image: bytes, mask: bytes | None, size: tuple[int, int] | None) -> bytes:
    """The picture to edit as PNG: resized to `size` when given, and with a mask its alpha channel taken from the
    mask's (transparent = change this), which is how LoadImage reads an inpainting mask."""
    from PIL import Image

    try:
        picture: Image.Image = Image.open(io.BytesIO(image))
        picture.load()
    except Exception as exc:  # PIL raises many kinds for bad data
        raise OpenAIError(400, f"image is not a readable image ({type(exc).__name__})", "image",
                          "invalid_image") from exc
    picture = picture.convert("RGBA")
    if size is not None:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    if mask is not None:
        try:
            alpha = Image.open(io.BytesIO(mask))
            alpha.load()
        except Exception as exc:  # PIL raises many kinds for bad data
            raise OpenAIError(400, f"mask is not a readable image ({type(exc).__name__})", "mask",
                              "invalid_image") from exc
        if alpha.size != Image.open(io.BytesIO(image)).size:
            raise OpenAIError(400, "mask must have the same size as image", "mask", "invalid_mask")
        channel = alpha.convert("RGBA").getchannel("A").resize(picture.size, Image.Resampling.NEAREST)
        picture.putalpha(channel)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@routes.post("/v1/images/edits")
@operation("OpenAI Images: edit an image (img2img, or inpaint with a mask) with a library workflow",
           response=ImagesResponse, errors=(400, 404, 409, 500), tags=("openai",),
           extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
               "type": "object", "required": ["image", "prompt"], "properties": {
                   "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                   "prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": "integer"},
                   "size": {"type": "string"}, "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                   "seed": {"type": "integer"}, "steps": {"type": "integer"},
                   "negative_prompt": {"type": "string"}}}}}}})
async def images_edits(request: web.Request) -> web.Response:
    state = get_state(request)
    if not request.content_type.startswith("multipart/"):
        raise OpenAIError(400, "images/edits takes multipart/form-data", None, "invalid_content_type")
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        name = getattr(part, "name", None) or ""
        data = bytes(await part.read())  # type: ignore[union-attr]
        if name.endswith("[]"):  # the SDK sends several images as image[]; the first one is edited
            name = name[:-2]
        if getattr(part, "filename", None) is not None:
            files.setdefault(name, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    if "image" not in files:
        raise OpenAIError(400, "image is required", "image", "missing_required_parameter")
    for key in ("n", "seed", "steps"):
        if key in fields:
            try:
                fields[key] = int(fields[key])
            except ValueError as exc:
                raise OpenAIError(400, f"{key} must be an integer", key, "invalid_value") from exc
    req = _parse(ImageGenerationRequest, fields)
    size = _size(req.size)
    picture = await asyncio.to_thread(_edit_image, files["image"], files.get("mask"), size)
    chosen = await asyncio.to_thread(_choose, state, req.model, "edits_masked" if "mask" in files else "edits")
    if "image" not in chosen.interface.inputs:
        raise OpenAIError(400, f"model {chosen.version.name!r} has no input 'image'", "model", "unsupported_model")
    try:
        name = await asyncio.to_thread(doors.store_input_image, state, picture, "edit")
    except DoorError as exc:
        raise _door_error(exc) from exc
    values = {**_values(chosen, req, size, with_size=False), "image": name}
    return await _run_all(request, state, chosen, values, req, "openai", size)


def _models(state: ServerState) -> list[dict[str, Any]]:
    from latentgraph.server.routes_workflows import _listing

    table = doors.mapping(state)
    entries = []
    usable = set()
    for entry in _listing(state):
        inputs = (entry.get("inputs") or {}).get("properties") or {}
        outputs = (entry.get("outputs") or {}).get("properties") or {}
        if "prompt" in inputs and any(o.get("x-type") == "IMAGE" for o in outputs.values()):
            usable.add(entry["name"])
            entries.append({"id": entry["name"], "object": "model", "created": 0, "owned_by": "latentgraph"})
    for alias, target in sorted(table.get("aliases", {}).items()):
        if target in usable:
            entries.append({"id": alias, "object": "model", "created": 0, "owned_by": "latentgraph"})
    return entries


@routes.get("/v1/models")
@operation("OpenAI: the library workflows usable as image models, and their aliases", response=ModelList,
           errors=(), tags=("openai",))
async def list_models(request: web.Request) -> web.Response:
    state = get_state(request)
    try:
        data = await asyncio.to_thread(_models, state)
    except DoorError as exc:
        raise _door_error(exc) from exc
    return web.json_response({"object": "list", "data": data})
