"""Hosting ComfyUI's editor (PyPI `comfyui-frontend-package`, the `editor` extra): its pages and static files.

`/` serves the editor, or a page on how to install it when the extra is missing. A first-time user (no
`Comfy.TutorialCompleted` setting yet) is sent to our txt2img template rather than to the editor's template
browser, whose tutorials name models we do not ship. The editor's other routes live in the `routes_*` modules
by concern (userdata, settings, i18n, logs, templates).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.server.routes_settings import read_settings
from latentgraph.server.routes_templates import FIRST_TEMPLATE, template_names
from latentgraph.server.userfiles import user_root

FRONTEND_PACKAGE = "comfyui_frontend_package"
EXTENSION_SCRIPT = Path(__file__).with_name("editor_default_workflow.js")
EXTENSION_URL = "/latentgraph/default-workflow.js"
INSIGHT_URL = "/latentgraph/insight.js"  # served by routes_insight: node badges, reasons, the run estimate
EDITOR_EXTENSIONS = [EXTENSION_URL, INSIGHT_URL]  # what /extensions lists: scripts the editor imports at boot

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


def is_first_visit(request: web.Request) -> bool:
    """No query and no `Comfy.TutorialCompleted` setting yet: the editor would open its template browser."""
    return not request.query_string and "Comfy.TutorialCompleted" not in read_settings(user_root(request)) \
        and FIRST_TEMPLATE in template_names()


def _static_handler(path: Path) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    return handler


def add_static_routes(app: web.Application) -> None:
    """The static editor at `/` (or a page on how to install it), its files, and our extension script."""
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
