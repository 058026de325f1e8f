"""Hosting ComfyUI's editor (PyPI `comfyui-frontend-package`, the `editor` extra) and the routes it calls.

Besides the protocol routes of the other modules, the editor reads and writes per-user state (settings, saved
workflows under `userdata`), asks for translations, model folders and its template browser's index. Those live
here. User state is kept under `<base>/user/default/`, ComfyUI's layout, so an existing ComfyUI user folder works.
A first-time user (no `Comfy.TutorialCompleted` setting yet) is sent to our txt2img template rather than to the
editor's template browser, whose tutorials name models we do not ship.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.server.jsonio import ApiError, parse_json
from latentgraph.server.routing import add_api_routes
from latentgraph.server.state import get_state
from latentgraph.server.uiformat import ConversionError, api_to_ui, is_ui_format, ui_to_api

FRONTEND_PACKAGE = "comfyui_frontend_package"
EXTENSION_SCRIPT = Path(__file__).with_name("editor_default_workflow.js")
EXTENSION_URL = "/latentgraph/default-workflow.js"
EDITOR_EXTENSIONS = [EXTENSION_URL]  # what /extensions lists: scripts the editor imports at boot
WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
FIRST_TEMPLATE = "txt2img"
SETTINGS_FILE = "comfy.settings.json"
USER = "default"
TEMPLATE_MODULE = "default"
# What the editor reads at boot that a new user has not written yet, answered as empty rather than 404.
EMPTY_USER_FILES = {"user.css": ("", "text/css"), "comfy.templates.json": ("[]", "application/json")}
# Settings defaults that differ from the editor's: its version check asks ComfyUI's release service, which
# knows nothing of latentgraph (and fails offline).
DEFAULT_SETTINGS: dict[str, Any] = {"Comfy.Notification.ShowVersionUpdates": False}

routes = web.RouteTableDef()

NOT_INSTALLED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latentgraph</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42em;margin:4em auto;padding:0 1em}}
code{{background:#eee;padding:.1em .3em}}</style></head><body>
<h1>latentgraph is running</h1>
<p>The visual editor is not installed. Install it with</p>
<pre><code>pip install -e .[editor]</code></pre>
<p>(or <code>pip install "latentgraph[editor]"</code>), then restart <code>latentgraph serve</code>.</p>
<p>The HTTP API works without it: see <a href="/openapi.json">/openapi.json</a>. This server speaks ComfyUI's
protocol at <code>{url}</code>.</p>
</body></html>
"""


def frontend_dir() -> Path | None:
    """The editor's static files, or None when the `editor` extra is not installed."""
    try:
        static = resources.files(FRONTEND_PACKAGE) / "static"
    except ModuleNotFoundError:
        return None
    path = Path(str(static))
    return path if (path / "index.html").is_file() else None


# ---------------------------------------------------------------- user files


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


def file_info(root: Path, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "modified": stat.st_mtime,
            "created": stat.st_ctime}


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes")


async def _body_bytes(request: web.Request) -> bytes:
    limit = get_state(request).options.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", "Request body too large", f"at most {limit} bytes")
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", "Request body too large", f"at most {limit} bytes")
    return data


@routes.get("/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    folder = safe_user_path(root, request.query["dir"]) if request.query.get("dir") else root
    recurse, full, split = (_flag(request, n, False) for n in ("recurse", "full_info", "split"))
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
async def post_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    path = safe_user_path(root, request.match_info["file"])
    data = await _body_bytes(request)
    if path.exists() and not _flag(request, "overwrite", True):
        raise ApiError(409, "exists", "File exists", f"{path.relative_to(root).as_posix()} exists; overwrite=false")
    if path.is_dir():
        raise ApiError(400, "invalid_path", "Invalid path", "that name is a folder")
    await asyncio.to_thread(write_atomically, path, data)
    info = file_info(root, path)
    return web.json_response(info if _flag(request, "full_info", False) else info["path"])


@routes.delete("/userdata/{file}")
async def delete_userdata(request: web.Request) -> web.Response:
    path = safe_user_path(user_root(request), request.match_info["file"])
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", f"no user file {request.match_info['file']!r}")
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    source = safe_user_path(root, request.match_info["file"])
    dest = safe_user_path(root, request.match_info["dest"])
    if not source.is_file():
        raise ApiError(404, "not_found", "File not found", f"no user file {request.match_info['file']!r}")
    if dest.exists() and not _flag(request, "overwrite", False):
        raise ApiError(409, "exists", "File exists", f"{dest.relative_to(root).as_posix()} exists; overwrite=false")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, dest)
    info = file_info(root, dest)
    return web.json_response(info if _flag(request, "full_info", False) else info["path"])


# ---------------------------------------------------------------- users and settings


@routes.get("/users")
async def users(request: web.Request) -> web.Response:
    """Single-user mode: no `users` key, so the editor skips its user picker."""
    return web.json_response({"storage": "server", "migrated": True})


def read_settings(root: Path) -> dict[str, Any]:
    path = root / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def write_settings(root: Path, settings: dict[str, Any]) -> None:
    write_atomically(root / SETTINGS_FILE, json.dumps(settings, indent=2).encode("utf-8"))


async def _json_body(request: web.Request) -> Any:
    return parse_json(await _body_bytes(request))


_settings_lock = asyncio.Lock()


@routes.get("/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response({**DEFAULT_SETTINGS, **read_settings(user_root(request))})


@routes.post("/settings")
async def post_settings(request: web.Request) -> web.Response:
    update = await _json_body(request)
    if not isinstance(update, dict):
        raise ApiError(400, "invalid_settings", "Settings must be a JSON object")
    root = user_root(request)
    async with _settings_lock:
        write_settings(root, {**read_settings(root), **update})
    return web.json_response({})


@routes.get("/settings/{id}")
async def get_setting(request: web.Request) -> web.Response:
    return web.json_response({**DEFAULT_SETTINGS, **read_settings(user_root(request))}.get(request.match_info["id"]))


@routes.post("/settings/{id}")
async def post_setting(request: web.Request) -> web.Response:
    value = await _json_body(request)
    root = user_root(request)
    async with _settings_lock:
        write_settings(root, {**read_settings(root), request.match_info["id"]: value})
    return web.json_response({})


# ---------------------------------------------------------------- translations and models


@routes.get("/i18n")
async def i18n(request: web.Request) -> web.Response:
    """Translations that node packages add to the editor's; ours are English only."""
    return web.json_response({})


@routes.get("/experiment/models")
async def model_kinds(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    return web.json_response([{"name": kind, "folders": [str(f) for f in folders.folders(kind)]}
                              for kind in folders.kinds()])


@routes.get("/experiment/models/{folder}")
async def model_list(request: web.Request) -> web.Response:
    folders = get_state(request).executor.env.folders
    kind = request.match_info["folder"]
    if kind not in folders.kinds():
        raise ApiError(404, "not_found", "Unknown model folder", f"no model folder {kind!r}")
    names = await asyncio.to_thread(folders.list, kind)
    return web.json_response([{"name": name, "pathIndex": 0} for name in names])


@routes.get("/global_subgraphs")
async def global_subgraphs(request: web.Request) -> web.Response:
    """Subgraph blueprints that node packages ship, by id; we ship none."""
    return web.json_response({})


@routes.get("/workflow_templates")
async def node_package_templates(request: web.Request) -> web.Response:
    """Templates shipped by node packages, by package; ours are in /templates/index.json instead."""
    return web.json_response({})


# ---------------------------------------------------------------- the editor's internal routes (paths, logs)


class LogBuffer(logging.Handler):
    """The server's recent log records, for the editor's terminal panel (`/internal/logs`)."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.records: deque[dict[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stamp = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        self.records.append({"t": stamp, "m": self.format(record) + "\n"})


LOGS = web.AppKey("latentgraph_editor_logs", LogBuffer)
internal_routes = web.RouteTableDef()


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


@internal_routes.get("/internal/logs")
async def logs_text(request: web.Request) -> web.Response:
    return web.json_response("".join(r["m"] for r in request.app[LOGS].records))


@internal_routes.get("/internal/logs/raw")
async def logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": list(request.app[LOGS].records), "size": {"cols": 120, "rows": 40}})


@internal_routes.patch("/internal/logs/subscribe")
async def logs_subscribe(request: web.Request) -> web.Response:
    """The editor asks for live log lines; it shows the buffered ones from /internal/logs/raw instead."""
    return web.json_response({})


# ---------------------------------------------------------------- templates


def _object_info(request: web.Request) -> dict[str, Any]:
    executor = get_state(request).executor
    return executor.registry.object_info(executor.env)


def template_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) if WORKFLOWS_DIR.is_dir() else []


def _template_ui(name: str, object_info: dict[str, Any]) -> dict[str, Any]:
    prompt = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return prompt if is_ui_format(prompt) else api_to_ui(prompt, object_info)


def _describe(name: str, ui: dict[str, Any]) -> dict[str, Any]:
    types = sorted({str(n["type"]) for n in ui["nodes"]})
    return {
        "name": name,
        "title": name.replace("_", " ").replace("-", " "),
        "description": f"latentgraph workflow '{name}': " + ", ".join(types),
        "mediaType": "image",
        "mediaSubtype": "svg",
        "tags": ["latentgraph"],
        "models": [],
    }


def template_index(object_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The editor's template-index format: categories (modules) each with their templates."""
    templates = [_describe(name, _template_ui(name, object_info)) for name in template_names()]
    templates.sort(key=lambda t: (t["name"] != FIRST_TEMPLATE, t["name"]))
    return [{"moduleName": TEMPLATE_MODULE, "title": "latentgraph", "category": "latentgraph", "type": "image",
             "isEssential": True, "templates": templates}]


def template_thumbnail(ui: dict[str, Any]) -> str:
    """An SVG sketch of the graph's layout: one box per node, titled, with its links."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    right = max((n["pos"][0] + n["size"][0] for n in nodes.values()), default=100) + 40
    bottom = max((n["pos"][1] + n["size"][1] for n in nodes.values()), default=100) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {right} {bottom}">',
             f'<rect width="{right}" height="{bottom}" fill="#202020"/>']
    for link in ui["links"]:
        a, b = nodes[link[1]], nodes[link[3]]
        x1, y1 = a["pos"][0] + a["size"][0], a["pos"][1] + 40
        x2, y2 = b["pos"][0], b["pos"][1] + 40
        parts.append(f'<path d="M{x1} {y1} C{x1 + 60} {y1} {x2 - 60} {y2} {x2} {y2}" stroke="#7aa" '
                     'stroke-width="6" fill="none"/>')
    for n in nodes.values():
        (x, y), (w, h) = n["pos"], n["size"]
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="12" fill="#353535" stroke="#888" '
                     'stroke-width="3"/>')
        parts.append(f'<text x="{x + 16}" y="{y + 36}" font-family="sans-serif" font-size="26" fill="#ddd">'
                     f'{html.escape(str(n.get("title") or n["type"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


async def templates(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    object_info = await asyncio.to_thread(_object_info, request)
    if name == "index.json" or (name.startswith("index.") and name.endswith(".json") and name != "index_logo.json"):
        return web.json_response(await asyncio.to_thread(template_index, object_info))
    if name == "index_logo.json":
        return web.json_response({})
    stem, _, suffix = name.rpartition(".")
    if suffix == "json" and stem in template_names():
        return web.json_response(await asyncio.to_thread(_template_ui, stem, object_info))
    if suffix == "svg" and stem.endswith("-1") and stem[:-2] in template_names():
        svg = template_thumbnail(await asyncio.to_thread(_template_ui, stem[:-2], object_info))
        return web.Response(text=svg, content_type="image/svg+xml")
    raise ApiError(404, "not_found", "No such template", f"templates are {template_names()}")


# ---------------------------------------------------------------- the UI format on POST /prompt


async def accept_ui_workflow(body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """A /prompt body whose `prompt` is an editor workflow, turned into one with the API prompt.

    The editor workflow also goes into `extra_data.extra_pnginfo.workflow`, as the editor itself would send it,
    so that saved PNGs carry the graph. Conversion errors are 400s naming the node.
    """
    prompt = body.get("prompt")
    if not is_ui_format(prompt):
        return body
    object_info = await asyncio.to_thread(_object_info, request)
    try:
        converted = await asyncio.to_thread(ui_to_api, prompt, object_info)
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


# ---------------------------------------------------------------- the editor's pages


def is_first_visit(request: web.Request) -> bool:
    """No query and no `Comfy.TutorialCompleted` setting yet: the editor would open its template browser."""
    return not request.query_string and "Comfy.TutorialCompleted" not in read_settings(user_root(request)) \
        and FIRST_TEMPLATE in template_names()


def _static_handler(path: Path) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    return handler


def add_routes(app: web.Application) -> None:
    """The editor's routes: user state, templates, and the static editor at `/` (or a page on how to install it)."""
    add_api_routes(app, routes)
    app.router.add_routes(internal_routes)
    app.router.add_get("/templates/{name}", templates)
    buffer = LogBuffer()
    app[LOGS] = buffer

    async def attach_logs(app: web.Application) -> None:
        logging.getLogger().addHandler(buffer)

    async def detach_logs(app: web.Application) -> None:
        logging.getLogger().removeHandler(buffer)

    app.on_startup.append(attach_logs)
    app.on_cleanup.append(detach_logs)
    static = frontend_dir()

    async def index(request: web.Request) -> web.StreamResponse:
        if static is None:
            url = f"{request.scheme}://{request.host}"
            return web.Response(text=NOT_INSTALLED_PAGE.format(url=html.escape(url)), content_type="text/html")
        if is_first_visit(request):  # the editor's `?template=` start-up intent loads it and ends the first run
            raise web.HTTPFound(f"./?template={FIRST_TEMPLATE}")
        response = web.FileResponse(static / "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def user_css(request: web.Request) -> web.Response:
        return web.Response(text="", content_type="text/css")

    app.router.add_get("/", index)
    app.router.add_get("/user.css", user_css)
    app.router.add_get(EXTENSION_URL, _static_handler(EXTENSION_SCRIPT))
    if static is None:
        return
    for entry in sorted(static.iterdir()):
        if entry.is_dir():
            app.router.add_static(f"/{entry.name}", entry)
        elif entry.is_file() and entry.name != "index.html":
            app.router.add_get(f"/{entry.name}", _static_handler(entry))
