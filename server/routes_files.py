"""Files in and out: /view serves images from input/output/temp, /upload/image and /upload/mask store uploads.

Every name goes through server.files, which refuses anything that would leave its folder. /view answers with
`nosniff` and a sandboxing Content-Security-Policy, and only image types are shown inline, so a file in the
output folder can never run script in the server's origin.
"""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from latentgraph.nodes.pixel_budget import over_budget
from latentgraph.server import api_models as M
from latentgraph.server.files import folder_root, safe_path, store_upload, verify_image
from latentgraph.server.jsonio import ApiError, parse_json
from latentgraph.server.operations import operation
from latentgraph.server.state import get_state
from PIL import Image

routes = web.RouteTableDef()

INLINE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
MAX_FIELD_BYTES = 64 * 1024
PREVIEW_FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
                   "png": ("PNG", "image/png")}


def _converted(path: Any, preview: str | None, channel: str) -> tuple[bytes, str]:
    """The image re-encoded for /view's `preview=format;quality` and `channel=rgb|a` options."""
    fmt, quality = "png", 90
    if preview:
        name, _, q = preview.partition(";")
        fmt = name.lower() if name.lower() in PREVIEW_FORMATS else "webp"
        quality = int(q) if q.isdigit() and 1 <= int(q) <= 100 else 90
    pil_format, mime = PREVIEW_FORMATS[fmt]
    with Image.open(path) as image:
        problem = over_budget(image.width, image.height, what="the image to convert")  # from the header
        if problem:
            raise ValueError(problem)
        if channel == "a":
            alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
            image = Image.merge("RGBA", (Image.new("L", image.size, 0),) * 3 + (alpha,))
        elif channel == "rgb" or pil_format == "JPEG":
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=pil_format, quality=quality)
    return buffer.getvalue(), mime


@routes.get("/view")
@operation("A file from input/, output/ or temp/", response=bytes, response_media="image/*", query=M.ViewQuery,
           errors=(400, 404))
async def view(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    filename = request.query.get("filename")
    if not filename:
        raise ApiError(400, "invalid_request", "filename is required")
    root = folder_root(state.executor.env.folders, request.query.get("type", "output") or "output")
    path = safe_path(root, request.query.get("subfolder", ""), filename)
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", f"no file {filename!r}"[:300])
    channel = request.query.get("channel", "rgba").lower()
    if channel not in ("rgba", "rgb", "a"):
        raise ApiError(400, "invalid_request", "channel must be rgba, rgb or a")
    preview = request.query.get("preview")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    quoted = json.dumps(path.name, ensure_ascii=True)
    if (preview or channel != "rgba") and mime in INLINE_TYPES:
        try:
            data, mime = await asyncio.to_thread(_converted, path, preview, channel)
        except (OSError, ValueError) as exc:
            raise ApiError(400, "invalid_image", "The file cannot be converted", str(exc)[:300]) from exc
        return web.Response(body=data, content_type=mime,
                            headers={**SAFE_HEADERS, "Content-Disposition": f"inline; filename={quoted}"})
    inline = mime in INLINE_TYPES
    headers = {**SAFE_HEADERS, "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename={quoted}",
               "Content-Type": mime if inline else "application/octet-stream"}
    return web.FileResponse(path, headers=headers)


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "upload_too_large", f"The {what} is too large", f"the limit is {limit} bytes")
    return bytes(data)


async def _read_upload(request: web.Request) -> tuple[dict[str, str], str, bytes]:
    """The form fields and the one file named `image`, read with size limits."""
    limit = get_state(request).options.max_upload_bytes
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError, HttpProcessingError) as exc:
        raise ApiError(400, "invalid_request", "Expected a multipart/form-data upload", str(exc)[:200]) from exc
    fields: dict[str, str] = {}
    filename, data = None, None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "invalid_request", "Nested multipart bodies are not accepted")
            if part.name == "image" and part.filename is not None:
                filename, data = part.filename, await _read_part(part, limit, "upload")
            elif part.name:
                raw = await _read_part(part, MAX_FIELD_BYTES, f"field {part.name!r}")
                fields[part.name] = raw.decode("utf-8", errors="replace")
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError) as exc:
        raise ApiError(400, "invalid_request", "The multipart body is malformed", str(exc)[:200]) from exc
    if filename is None or data is None:
        raise ApiError(400, "invalid_request", "No image uploaded", "send the file in a form field named 'image'")
    return fields, filename, data


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


async def _store(request: web.Request, fields: dict[str, str], filename: str, data: bytes) -> web.Response:
    state = get_state(request)
    kind = fields.get("type") or "input"
    root = folder_root(state.executor.env.folders, kind)
    subfolder = fields.get("subfolder", "")
    name = await asyncio.to_thread(store_upload, root, subfolder, filename, data, _flag(fields.get("overwrite")))
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


@routes.post("/upload/image")
@operation("Store an uploaded image (renamed 'name (1).png' on a clash unless identical)", body=M.UploadForm,
           body_media="multipart/form-data", response=M.UploadAnswer, errors=(400, 404, 413))
async def upload_image(request: web.Request) -> web.Response:
    fields, filename, data = await _read_upload(request)
    await asyncio.to_thread(verify_image, data)
    return await _store(request, fields, filename, data)


def _apply_mask(original_path: Any, mask_data: bytes) -> bytes:
    """The original image with the uploaded mask's alpha as its alpha, as a PNG (what the mask editor sends)."""
    with Image.open(original_path) as original, Image.open(io.BytesIO(mask_data)) as mask:
        result = original.convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.size != result.size:
            alpha = alpha.resize(result.size, Image.Resampling.LANCZOS)
        result.putalpha(alpha)
        buffer = io.BytesIO()
        result.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


@routes.post("/upload/mask")
@operation("Store the original image with the uploaded mask's alpha", body=M.MaskUploadForm,
           body_media="multipart/form-data", response=M.UploadAnswer, errors=(400, 404, 413))
async def upload_mask(request: web.Request) -> web.Response:
    state = get_state(request)
    fields, filename, data = await _read_upload(request)
    await asyncio.to_thread(verify_image, data)
    ref = parse_json(fields.get("original_ref", "").encode())
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ApiError(400, "invalid_request", "original_ref must be a JSON object with a filename")
    root = folder_root(state.executor.env.folders, str(ref.get("type") or "input"))
    original = safe_path(root, str(ref.get("subfolder") or ""), ref["filename"])
    if not original.is_file():
        raise ApiError(404, "not_found", "The original image was not found", ref["filename"][:200])
    try:
        combined = await asyncio.to_thread(_apply_mask, original, data)
    except (OSError, ValueError) as exc:
        raise ApiError(400, "invalid_image", "The mask cannot be applied to the original", str(exc)[:300]) from exc
    return await _store(request, fields, filename, combined)
