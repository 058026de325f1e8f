"""`/settings`: the editor's settings, one JSON file in the user folder (`comfy.settings.json`, as ComfyUI's)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.server import api_models as M
from latentgraph.server.jsonio import ApiError
from latentgraph.server.operations import operation
from latentgraph.server.userfiles import json_body, user_root, write_atomically

routes = web.RouteTableDef()

SETTINGS_FILE = "comfy.settings.json"
# Settings defaults that differ from the editor's: its version check asks ComfyUI's release service, which
# knows nothing of latentgraph (and fails offline).
DEFAULT_SETTINGS: dict[str, Any] = {"Comfy.Notification.ShowVersionUpdates": False}

_settings_lock = asyncio.Lock()


def read_settings(root: Path) -> dict[str, Any]:
    path = root / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def write_settings(root: Path, settings: dict[str, Any]) -> None:
    write_atomically(root / SETTINGS_FILE, json.dumps(settings, indent=2).encode("utf-8"))


@routes.get("/settings")
@operation("Every setting", response=M.Settings, errors=())
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response({**DEFAULT_SETTINGS, **read_settings(user_root(request))})


@routes.post("/settings")
@operation("Update settings (merged into the stored ones)", body=M.Settings, response=M.Empty, errors=(400, 413))
async def post_settings(request: web.Request) -> web.Response:
    update = await json_body(request)
    if not isinstance(update, dict):
        raise ApiError(400, "invalid_settings", "Settings must be a JSON object")
    root = user_root(request)
    async with _settings_lock:
        write_settings(root, {**read_settings(root), **update})
    return web.json_response({})


@routes.get("/settings/{id}")
@operation("One setting (null if unset)", response=M.AnyJson, errors=())
async def get_setting(request: web.Request) -> web.Response:
    return web.json_response({**DEFAULT_SETTINGS, **read_settings(user_root(request))}.get(request.match_info["id"]))


@routes.post("/settings/{id}")
@operation("Set one setting", body=M.AnyJson, response=M.Empty, errors=(400, 413))
async def post_setting(request: web.Request) -> web.Response:
    value = await json_body(request)
    root = user_root(request)
    async with _settings_lock:
        write_settings(root, {**read_settings(root), request.match_info["id"]: value})
    return web.json_response({})
