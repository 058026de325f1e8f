"""What the server knows and has: node definitions, models and folders, embeddings, features and system statistics."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from latentgraph.server import api_models as M
from latentgraph.server.jsonio import ApiError
from latentgraph.server.operations import operation
from latentgraph.server.routes_static import EDITOR_EXTENSIONS
from latentgraph.server.state import get_state

routes = web.RouteTableDef()
internal_routes = web.RouteTableDef()  # the editor's /internal/* routes: not mirrored under /api


def latentgraph_version() -> str:
    try:
        return version("latentgraph")
    except PackageNotFoundError:
        return "0.0.0+source"


def _memory() -> tuple[int, int]:
    """Total and available RAM in bytes, from the OS (no psutil needed)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _devices() -> list[dict[str, Any]]:
    import torch

    if torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": reserved, "torch_vram_free": reserved - torch.cuda.memory_allocated(
                                index)})
        return devices
    total, free = _memory()
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
             "torch_vram_total": total, "torch_vram_free": free}]


def system_stats() -> dict[str, Any]:
    import torch

    total, free = _memory()
    return {
        "system": {
            "os": os.name if sys.platform != "linux" else "posix",
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": latentgraph_version(),
            "latentgraph_version": latentgraph_version(),
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            "argv": sys.argv,
            "platform": platform.platform(),
        },
        "devices": _devices(),
    }


@routes.get("/object_info")
@operation("Every node class: inputs, outputs, category", response=M.ObjectInfo, errors=())
async def object_info(request: web.Request) -> web.Response:
    executor = get_state(request).executor
    info = await asyncio.to_thread(executor.registry.object_info, executor.env)
    return web.json_response(info)


@routes.get("/object_info/{node_class}")
@operation("One node class ({} if unknown)", response=M.ObjectInfo, errors=())
async def object_info_one(request: web.Request) -> web.Response:
    executor = get_state(request).executor
    name = request.match_info["node_class"]
    if name not in executor.registry:
        return web.json_response({})
    info = await asyncio.to_thread(executor.registry.object_info, executor.env, name)
    return web.json_response(info)


@routes.get("/system_stats")
@operation("System and device information", response=M.SystemStats, errors=())
async def get_system_stats(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(system_stats))


@routes.get("/embeddings")
@operation("Embedding names", response=M.StringList, errors=())
async def embeddings(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    names = await asyncio.to_thread(folders.list, "embeddings")
    return web.json_response([os.path.splitext(name)[0] for name in names])


@routes.get("/extensions")
@operation("Editor extension scripts", response=M.StringList, errors=())
async def extensions(request: web.Request) -> web.Response:
    """Editor extension scripts: latentgraph's own (server/routes_static.py); its nodes are plain Python."""
    return web.json_response(EDITOR_EXTENSIONS)


@routes.get("/features")
@operation("Server feature flags", response=M.Features, errors=())
async def features(request: web.Request) -> web.Response:
    return web.json_response(server_feature_flags(get_state(request).options.max_upload_bytes))


def server_feature_flags(max_upload_bytes: int) -> dict[str, Any]:
    return {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes}


@routes.get("/models")
@operation("Model folder kinds", response=M.StringList, errors=())
async def model_folders(request: web.Request) -> web.Response:
    return web.json_response(get_state(request).executor.env.folders.kinds())


@routes.get("/models/{folder}")
@operation("Model files of one kind", response=M.StringList, errors=(404,))
async def model_files(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    folder = request.match_info["folder"]
    if folder not in folders.kinds():
        raise ApiError(404, "not_found", "Unknown model folder", f"known folders: {folders.kinds()}")
    return web.json_response(await asyncio.to_thread(folders.list, folder))


@routes.get("/experiment/models")
@operation("Model folder kinds with their folders (the editor's model library)", response=list[M.ModelFolder],
           errors=())
async def model_kinds(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    return web.json_response([{"name": kind, "folders": [str(f) for f in folders.folders(kind)]}
                              for kind in folders.kinds()])


@routes.get("/experiment/models/{folder}")
@operation("Model files of one kind (the editor's model library)", response=list[M.ModelFile], errors=(404,))
async def model_list(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    kind = request.match_info["folder"]
    if kind not in folders.kinds():
        raise ApiError(404, "not_found", "Unknown model folder", f"no model folder {kind!r}")
    names = await asyncio.to_thread(folders.list, kind)
    return web.json_response([{"name": name, "pathIndex": 0} for name in names])


@internal_routes.get("/internal/folder_paths")
async def folder_paths(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    return web.json_response({kind: [str(f) for f in folders.folders(kind)] for kind in folders.kinds()})


@internal_routes.get("/internal/files/{kind}")
async def internal_files(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    roots = {"input": folders.input_dir, "output": folders.output_dir, "temp": folders.temp_dir}
    root = roots.get(request.match_info["kind"])
    if root is None:
        raise ApiError(400, "invalid_type", "Unknown folder", "use input, output or temp")
    names = await asyncio.to_thread(lambda: sorted(p.name for p in root.iterdir() if p.is_file()))
    return web.json_response(names)
