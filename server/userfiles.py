"""The per-user folder the editor writes to (`<base>/user/default/`, ComfyUI's layout) and safe access to it.

Shared by the userdata and settings routes: every name is resolved inside the user folder (a `..` or absolute
path is a 400), files are replaced atomically so a crash never leaves half a workflow, and bodies are read with
the server's JSON size limit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.server.jsonio import ApiError, parse_json, read_body
from latentgraph.server.state import get_state

USER = "default"


def user_root(request: web.Request) -> Path:
    root = get_state(request).executor.env.folders.user_dir / USER
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def safe_user_path(root: Path, relative: str) -> Path:
    """`relative` inside `root`; anything that would leave it (absolute, `..`, NUL) is a 400."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")) or ":" in relative:
        raise ApiError(400, "invalid_path", "Invalid path", f"{relative!r} is not a relative path in the user folder")
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ApiError(400, "invalid_path", "Invalid path", f"{relative!r} leaves the user folder")
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file, then a rename: a reader never sees half a file, and a failed write (a full disk) leaves
    the old file as it was and no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
        try:
            handle.write(data)
            handle.flush()
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def file_info(root: Path, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "modified": stat.st_mtime,
            "created": stat.st_ctime}


def query_flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes")


async def body_bytes(request: web.Request) -> bytes:
    return await read_body(request, get_state(request).options.max_json_bytes)


async def json_body(request: web.Request) -> Any:
    return parse_json(await body_bytes(request))
