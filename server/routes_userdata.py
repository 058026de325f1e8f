"""`/userdata` and `/users`: the editor's saved workflows and other per-user files, in single-user mode."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from aiohttp import web
from latentgraph.server import api_models as M
from latentgraph.server.jsonio import ApiError
from latentgraph.server.operations import operation
from latentgraph.server.userfiles import body_bytes, file_info, query_flag, safe_user_path, user_root, write_atomically

routes = web.RouteTableDef()

# What the editor reads at boot that a new user has not written yet, answered as empty rather than 404.
EMPTY_USER_FILES = {"user.css": ("", "text/css"), "comfy.templates.json": ("[]", "application/json")}


@routes.get("/users")
@operation("Single-user mode (no user picker)", response=M.Users, errors=())
async def users(request: web.Request) -> web.Response:
    """Single-user mode: no `users` key, so the editor skips its user picker."""
    return web.json_response({"storage": "server", "migrated": True})


@routes.get("/userdata")
@operation("Files in the user folder", response=M.UserDataListing, query=M.UserDataQuery)
async def list_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    folder = safe_user_path(root, request.query["dir"]) if request.query.get("dir") else root
    recurse, full, split = (query_flag(request, n, False) for n in ("recurse", "full_info", "split"))
    if not folder.is_dir():
        return web.json_response([])
    files = sorted(p for p in (folder.rglob("*") if recurse else folder.iterdir())
                   if p.is_file() and not p.name.startswith(".tmp-"))
    entries: list[Any] = []
    for path in files:
        relative = path.relative_to(folder).as_posix()
        if full:
            entries.append({**file_info(folder, path)})
        elif split:
            entries.append([relative, *relative.split("/")])
        else:
            entries.append(relative)
    return web.json_response(entries)


@routes.get("/userdata/{file}")
@operation("One user file (URL-encode slashes)", response=bytes, response_media="application/octet-stream",
           errors=(400, 404))
async def get_userdata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    path = safe_user_path(user_root(request), name)
    if not path.is_file():
        if name in EMPTY_USER_FILES:
            text, content_type = EMPTY_USER_FILES[name]
            return web.Response(text=text, content_type=content_type)
        raise ApiError(404, "not_found", "File not found", f"no user file {name!r}")
    return web.FileResponse(path)


@routes.post("/userdata/{file}")
@operation("Write a user file atomically", body=bytes, body_media="application/octet-stream",
           query=M.UserDataWriteQuery, response=M.UserFileWritten, errors=(400, 409, 413))
async def post_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    path = safe_user_path(root, request.match_info["file"])
    data = await body_bytes(request)
    if path.exists() and not query_flag(request, "overwrite", True):
        raise ApiError(409, "exists", "File exists", f"{path.relative_to(root).as_posix()} exists; overwrite=false")
    if path.is_dir():
        raise ApiError(400, "invalid_path", "Invalid path", "that name is a folder")
    await asyncio.to_thread(write_atomically, path, data)
    info = file_info(root, path)
    return web.json_response(info if query_flag(request, "full_info", False) else info["path"])


@routes.delete("/userdata/{file}")
@operation("Delete a user file", status=204, errors=(400, 404))
async def delete_userdata(request: web.Request) -> web.Response:
    path = safe_user_path(user_root(request), request.match_info["file"])
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", f"no user file {request.match_info['file']!r}")
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
@operation("Rename a user file", query=M.UserDataWriteQuery, response=M.UserFileWritten, errors=(400, 404, 409))
async def move_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    source = safe_user_path(root, request.match_info["file"])
    dest = safe_user_path(root, request.match_info["dest"])
    if not source.is_file():
        raise ApiError(404, "not_found", "File not found", f"no user file {request.match_info['file']!r}")
    if dest.exists() and not query_flag(request, "overwrite", False):
        raise ApiError(409, "exists", "File exists", f"{dest.relative_to(root).as_posix()} exists; overwrite=false")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, dest)
    info = file_info(root, dest)
    return web.json_response(info if query_flag(request, "full_info", False) else info["path"])
