"""The subset of AUTOMATIC1111's `sdapi/v1` that clients call (SillyTavern, KoboldAI, Open WebUI, Krita plugins),
backed by library workflows: set such a client's "A1111 / SD WebUI" URL to `http://HOST:PORT`.

`txt2img` and `img2img` map A1111's fields onto the declared inputs of the workflow the door mapping names for
the task (server.doors): prompt, negative_prompt -> negative, seed (-1: random), steps, cfg_scale -> cfg,
width, height, denoising_strength -> denoise, sampler_name (A1111's names: "DPM++ 2M Karras" is sampler dpmpp_2m
with scheduler karras) -> sampler_name + scheduler, the checkpoint of `options`/`override_settings` -> checkpoint,
init_images[0] (+ mask) -> image. A field is passed only when the workflow declares its input; the fields it
does not declare are listed in `info` under `ignored_parameters` rather than dropped in silence (A1111 clients
send every field on every call). `batch_size` x `n_iter` images are that many runs with seeds seed, seed+1, ...
(A1111's all_seeds). `<lora:name:weight>` in the prompt is taken out of the text and applied as A1111 does,
through the workflow mapped to `txt2img_lora` (its declared `lora` and `lora_strength` inputs; one LoRA). Everything
is queued on the server's one queue, so /queue, /history and the WebSocket see it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import re
import time
from typing import Any

from aiohttp import web
from latentgraph.server import doors
from latentgraph.server.doors import Chosen, DoorError
from latentgraph.server.jsonio import ApiError, read_object
from latentgraph.server.operations import operation
from latentgraph.server.state import ServerState, get_state
from pydantic import BaseModel, ConfigDict, Field, ValidationError

routes = web.RouteTableDef()

SEED_MAX = 2**32 - 1
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?>")
MAX_IMAGES = 16
OPTIONS_KEY = "sdapi_options"  # the door's A1111 options, kept on the server state object

# A1111 sampler labels -> ComfyUI sampler names; a label may end in a scheduler label ("DPM++ 2M Karras").
SAMPLERS = {
    "Euler": "euler", "Euler a": "euler_ancestral", "Heun": "heun", "DPM2": "dpm_2", "DPM2 a": "dpm_2_ancestral",
    "LMS": "lms", "DPM++ SDE": "dpmpp_sde", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 3M SDE": "dpmpp_3m_sde", "DDPM": "ddpm", "LCM": "lcm", "DEIS": "deis", "DDIM": "ddim",
    "UniPC": "uni_pc",
}
SCHEDULERS = {"Automatic": None, "Uniform": "normal", "Karras": "karras", "Exponential": "exponential",
              "SGM Uniform": "sgm_uniform", "Simple": "simple", "DDIM": "ddim_uniform", "Beta": "beta",
              "Normal": "normal"}


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionProcessingTxt2Img body: every field optional, unknown ones accepted (clients send
    hires, refiner, script and face-restore fields this door does not act on)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int | None = Field(None, ge=1, le=10000)
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    denoising_strength: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    inpainting_mask_invert: int = 0


class SdapiImages(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


def _error(status: int, message: str) -> ApiError:
    """A1111 (FastAPI) answers errors as {"detail": ...}; the server's shape carries the same words."""
    return ApiError(status, "sdapi_error", message, message, detail=message)


def _choices(state: ServerState, node: str, name: str) -> list[str]:
    """A widget's choices from the registry's node declarations (the server stays free of diffusion imports)."""
    registry = state.executor.registry
    if node not in registry:
        return []
    spec = registry.spec(node).inputs.get(name)
    choices = spec.choices(state.executor.env) if spec is not None else None
    return [str(c) for c in choices] if choices is not None else []


def _options(state: ServerState) -> dict[str, Any]:
    options = getattr(state, OPTIONS_KEY, None)
    if options is None:
        checkpoints = _choices(state, "CheckpointLoaderSimple", "ckpt_name")
        options = {"sd_model_checkpoint": checkpoints[0] if checkpoints else None, "samples_format": "png",
                   "sd_checkpoint_hash": None, "CLIP_stop_at_last_layers": 1}
        setattr(state, OPTIONS_KEY, options)
    return options


def sampler_and_scheduler(label: str, scheduler: str | None, known: list[str]) -> tuple[str, str | None]:
    """A1111's sampler label (with an optional scheduler suffix) as ComfyUI names; a ComfyUI name passes as is."""
    if label in known:
        return label, _scheduler(scheduler)
    for suffix, comfy_scheduler in SCHEDULERS.items():
        if label.endswith(" " + suffix) and label[: -len(suffix) - 1] in SAMPLERS:
            return SAMPLERS[label[: -len(suffix) - 1]], comfy_scheduler or _scheduler(scheduler)
    if label in SAMPLERS:
        return SAMPLERS[label], _scheduler(scheduler)
    raise _error(422, f"unknown sampler {label!r}; known: {', '.join(SAMPLERS)}")


def _scheduler(label: str | None) -> str | None:
    if label is None:
        return None
    if label in SCHEDULERS:
        return SCHEDULERS[label]
    lowered = label.lower()
    return next((v for k, v in SCHEDULERS.items() if k.lower() == lowered or v == lowered), lowered)


def _decode_image(data: str, what: str) -> bytes:
    raw = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise _error(422, f"{what} is not base64") from exc


def _masked_image(image: bytes, mask: bytes, invert: bool) -> bytes:
    """A1111's mask is white where to paint; LoadImage reads transparent pixels as the mask, so the mask's
    brightness becomes the image's inverse alpha."""
    import io

    from PIL import Image, ImageOps

    picture = Image.open(io.BytesIO(image)).convert("RGBA")
    gray = Image.open(io.BytesIO(mask)).convert("L").resize(picture.size, Image.Resampling.NEAREST)
    picture.putalpha(gray if invert else ImageOps.invert(gray))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def lora_tags(state: ServerState, prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:name:weight>` tags, and the tags as (LoRA file, weight), as A1111 reads them
    (weight 1 when left out); an unknown LoRA name is a 422."""
    known = _choices(state, "LoraLoader", "lora_name")
    found = []
    for match in LORA_TAG.finditer(prompt):
        name = match.group(1).strip()
        file = next((k for k in known if name in (k, k.rsplit(".", 1)[0])), None)
        if file is None:
            raise _error(422, f"unknown LoRA {name!r} in the prompt; known: {', '.join(known)}")
        found.append((file, float(match.group(2)) if match.group(2) else 1.0))
    return LORA_TAG.sub("", prompt).strip(), found


def _values(state: ServerState, chosen: Chosen, req: Txt2ImgRequest) -> tuple[dict[str, Any], list[str]]:
    """A1111's fields as declared inputs, and the names of the given fields the workflow has no input for."""
    declared = chosen.interface.inputs
    options = _options(state)
    checkpoint = req.override_settings.get("sd_model_checkpoint") or options.get("sd_model_checkpoint")
    wanted: list[tuple[str, str, Any]] = [("prompt", "prompt", req.prompt),
                                          ("negative_prompt", "negative", req.negative_prompt)]
    for field_name, input_name, value in (("steps", "steps", req.steps), ("cfg_scale", "cfg", req.cfg_scale),
                                          ("width", "width", req.width), ("height", "height", req.height),
                                          ("denoising_strength", "denoise", req.denoising_strength)):
        if value is not None:
            wanted.append((field_name, input_name, value))
    label = req.sampler_name or req.sampler_index
    if label:
        sampler, scheduler = sampler_and_scheduler(label, req.scheduler, _choices(state, "KSampler", "sampler_name"))
        wanted.append(("sampler_name", "sampler_name", sampler))
        if scheduler is not None:
            wanted.append(("scheduler", "scheduler", scheduler))
    elif req.scheduler:
        wanted.append(("scheduler", "scheduler", _scheduler(req.scheduler)))
    if checkpoint and "checkpoint" in declared:
        wanted.append(("sd_model_checkpoint", "checkpoint", _checkpoint_name(state, checkpoint)))
    if LORA_TAG.search(req.prompt):
        prompt, tags = lora_tags(state, req.prompt)
        if len(tags) > 1 or not {"lora", "lora_strength"} <= set(declared):
            raise _error(422, f"workflow {chosen.version.name!r} applies {int('lora' in declared)} LoRA through "
                              f"declared inputs; the prompt names {len(tags)}")
        wanted[0] = ("prompt", "prompt", prompt)
        wanted += [("lora", "lora", tags[0][0]), ("lora", "lora_strength", tags[0][1])]
    values, ignored = {}, []
    for field_name, input_name, value in wanted:
        if input_name in declared:
            values[input_name] = value
        elif value not in ("", None):
            ignored.append(field_name)
    return values, ignored


def _checkpoint_name(state: ServerState, title: str) -> str:
    """A checkpoint file name from A1111's title (`name [hash]`), its model_name (no extension) or the file name."""
    known = _choices(state, "CheckpointLoaderSimple", "ckpt_name")
    name = title.rsplit(" [", 1)[0] if title.endswith("]") else title
    for candidate in known:
        if name in (candidate, candidate.rsplit(".", 1)[0]):
            return candidate
    raise _error(422, f"unknown checkpoint {title!r}; known: {', '.join(known)}")


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _error(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


async def _generate(request: web.Request, model: type[Txt2ImgRequest], task: str) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes, allow_empty=True)
    req = _parse(model, body)
    masked = isinstance(req, Img2ImgRequest) and bool(req.mask)
    suffix = "_masked" if masked else "_lora" if LORA_TAG.search(req.prompt) else ""
    try:
        chosen = await asyncio.to_thread(doors.choose, state, None, task + suffix, "sdapi")
    except DoorError as exc:
        raise _error(exc.status, exc.message) from exc
    values, ignored = await asyncio.to_thread(_values, state, chosen, req)
    if isinstance(req, Img2ImgRequest):
        if not req.init_images:
            raise _error(422, "init_images: an image is required")
        if "image" not in chosen.interface.inputs:
            raise _error(409, f"workflow {chosen.version.name!r} has no input 'image'")
        image = _decode_image(req.init_images[0], "init_images[0]")
        if req.mask:
            image = await asyncio.to_thread(_masked_image, image, _decode_image(req.mask, "mask"),
                                            bool(req.inpainting_mask_invert))
        try:
            values["image"] = await asyncio.to_thread(doors.store_input_image, state, image, "init")
        except DoorError as exc:
            raise _error(422, exc.message) from exc
    count = req.batch_size * req.n_iter
    if count > MAX_IMAGES:
        raise _error(422, f"batch_size x n_iter is at most {MAX_IMAGES}")
    seeded = "seed" in chosen.interface.inputs
    seed = req.seed if req.seed >= 0 else random.randint(0, SEED_MAX)
    if not seeded:
        ignored.append("seed")
    run_ids = []
    try:
        for index in range(count):
            one = {**values, "seed": seed + index} if seeded else values
            run_ids.append(await asyncio.to_thread(doors.queue_run, state, chosen, one, "sdapi",
                                                   request.query.get("client_id") or None))
        jobs = [await doors.finish(state, run_id) for run_id in run_ids]
    except DoorError as exc:
        raise _error(422 if exc.status == 400 else exc.status, exc.message) from exc
    images = []
    for job in jobs:
        for item in doors.files_of(job, chosen):
            images.append(doors.b64(await asyncio.to_thread(doors.read_file, state, item)))
    seeds = [seed + i for i in range(count)] if seeded else [req.seed] * count
    info = {"prompt": req.prompt, "all_prompts": [req.prompt] * count, "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * count, "seed": seeds[0], "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * count, "width": req.width, "height": req.height,
            "sampler_name": req.sampler_name or req.sampler_index, "cfg_scale": req.cfg_scale, "steps": req.steps,
            "batch_size": req.batch_size, "n_iter": req.n_iter, "denoising_strength": req.denoising_strength,
            "sd_model_name": values.get("checkpoint"), "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "workflow": chosen.version.ref, "run_ids": run_ids, "inputs": values,
            "ignored_parameters": sorted(set(ignored)),
            "infotexts": [f"{req.prompt}\nNegative prompt: {req.negative_prompt}\nSteps: {req.steps}, Sampler: "
                          f"{req.sampler_name or req.sampler_index}, CFG scale: {req.cfg_scale}, Seed: {s}, "
                          f"Size: {req.width}x{req.height}" for s in seeds]}
    parameters = {**body, "init_images": None} if "init_images" in body else body
    return web.json_response({"images": images if req.send_images else [], "parameters": parameters,
                              "info": json.dumps(info)})


@routes.post("/sdapi/v1/txt2img")
@operation("A1111 sdapi: text to image with the mapped library workflow", body=Txt2ImgRequest,
           response=SdapiImages, errors=(404, 409, 422), tags=("sdapi",))
async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, Txt2ImgRequest, "txt2img")


@routes.post("/sdapi/v1/img2img")
@operation("A1111 sdapi: image to image (inpaint with mask) with the mapped library workflow", body=Img2ImgRequest,
           response=SdapiImages, errors=(404, 409, 422), tags=("sdapi",))
async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, Img2ImgRequest, "img2img")


@routes.get("/sdapi/v1/sd-models")
@operation("A1111 sdapi: installed checkpoints", response=list[dict[str, Any]], errors=(), tags=("sdapi",))
async def sd_models(request: web.Request) -> web.Response:
    state = get_state(request)
    names = await asyncio.to_thread(_choices, state, "CheckpointLoaderSimple", "ckpt_name")
    return web.json_response([{"title": name, "model_name": name.rsplit(".", 1)[0], "hash": None, "sha256": None,
                               "filename": name, "config": None} for name in names])


@routes.get("/sdapi/v1/samplers")
@operation("A1111 sdapi: samplers (A1111 labels; aliases give the ComfyUI names)", response=list[dict[str, Any]],
           errors=(), tags=("sdapi",))
async def samplers(request: web.Request) -> web.Response:
    known = set(await asyncio.to_thread(_choices, get_state(request), "KSampler", "sampler_name"))
    return web.json_response([{"name": label, "aliases": [name], "options": {}}
                              for label, name in SAMPLERS.items() if name in known])


@routes.get("/sdapi/v1/schedulers")
@operation("A1111 sdapi: schedulers", response=list[dict[str, Any]], errors=(), tags=("sdapi",))
async def schedulers(request: web.Request) -> web.Response:
    known = set(await asyncio.to_thread(_choices, get_state(request), "KSampler", "scheduler"))
    return web.json_response([{"name": label.lower().replace(" ", "_"), "label": label, "aliases": [name],
                               "default_rho": -1, "need_inner_model": False}
                              for label, name in SCHEDULERS.items() if name in known and label != "Normal"])


@routes.get("/sdapi/v1/upscalers")
@operation("A1111 sdapi: upscalers (none run through this door)", response=list[dict[str, Any]], errors=(),
           tags=("sdapi",))
async def upscalers(request: web.Request) -> web.Response:
    return web.json_response([{"name": "None", "model_name": None, "model_path": None, "model_url": None,
                               "scale": 1}])


@routes.get("/sdapi/v1/options")
@operation("A1111 sdapi: options (sd_model_checkpoint picks the checkpoint of later runs)",
           response=dict[str, Any], errors=(), tags=("sdapi",))
async def get_options(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_options, get_state(request)))


@routes.post("/sdapi/v1/options")
@operation("A1111 sdapi: set options (a checkpoint switch takes sd_model_checkpoint)", body=dict[str, Any],
           response=None, errors=(422,), tags=("sdapi",))
async def post_options(request: web.Request) -> web.Response:
    state = get_state(request)
    body = await read_object(request, state.options.max_json_bytes)
    options = await asyncio.to_thread(_options, state)
    if "sd_model_checkpoint" in body:
        body["sd_model_checkpoint"] = await asyncio.to_thread(_checkpoint_name, state,
                                                              str(body["sd_model_checkpoint"]))
    options.update(body)
    return web.json_response(None)


@routes.get("/sdapi/v1/progress")
@operation("A1111 sdapi: progress of the running job", response=dict[str, Any], errors=(), tags=("sdapi",))
async def progress(request: web.Request) -> web.Response:
    state = get_state(request)
    running = state.worker.current
    value, maximum = 0, 0
    if running is not None and running.progress is not None:
        value, maximum = int(running.progress.get("value") or 0), int(running.progress.get("max") or 0)
    pending = state.queue_status()["exec_info"]["queue_remaining"]
    return web.json_response({
        "progress": value / maximum if maximum else 0.0, "eta_relative": 0.0,
        "state": {"skipped": False, "interrupted": False, "job": running.item.prompt_id if running else "",
                  "job_count": pending, "job_timestamp": "", "job_no": 0, "sampling_step": value,
                  "sampling_steps": maximum},
        "current_image": None, "textinfo": None})


@routes.post("/sdapi/v1/interrupt")
@operation("A1111 sdapi: interrupt the running job", response=None, body=None, errors=(), tags=("sdapi",))
async def interrupt(request: web.Request) -> web.Response:
    get_state(request).worker.interrupt(None)
    return web.json_response(None)


@routes.get("/sdapi/v1/loras")
@operation("A1111 sdapi: installed LoRAs", response=list[dict[str, Any]], errors=(), tags=("sdapi",))
async def loras(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(_choices, get_state(request), "LoraLoader", "lora_name")
    return web.json_response([{"name": n.rsplit(".", 1)[0], "alias": n.rsplit(".", 1)[0], "path": n,
                               "metadata": {}} for n in names])


@routes.get("/sdapi/v1/embeddings")
@operation("A1111 sdapi: textual-inversion embeddings", response=dict[str, Any], errors=(), tags=("sdapi",))
async def embeddings(request: web.Request) -> web.Response:
    state = get_state(request)
    names = await asyncio.to_thread(state.executor.env.folders.list, "embeddings") \
        if "embeddings" in state.executor.env.folders.kinds() else []
    return web.json_response({"loaded": {n.rsplit(".", 1)[0]: {"step": None, "sd_checkpoint": None,
                                                                "sd_checkpoint_name": None, "shape": None,
                                                                "vectors": None} for n in names}, "skipped": {}})
