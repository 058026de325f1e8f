"""`/templates/...`: the workflows in `workflows/` as the editor's template browser wants them.

The index (one category, txt2img first), each template as an editor (UI-format) workflow converted from the
API-format file, and an SVG sketch of its layout as the thumbnail. Not mirrored under /api, as in ComfyUI.
"""

from __future__ import annotations

import asyncio
import html
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from latentgraph.engine.workflow_format import api_to_ui, is_ui_format
from latentgraph.server.jsonio import ApiError
from latentgraph.server.state import get_state

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
FIRST_TEMPLATE = "txt2img"
TEMPLATE_MODULE = "default"


def template_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) if WORKFLOWS_DIR.is_dir() else []


def template_ui(name: str, object_info: dict[str, Any]) -> dict[str, Any]:
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
    templates = [_describe(name, template_ui(name, object_info)) for name in template_names()]
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
    object_info = await asyncio.to_thread(get_state(request).object_info)
    if name == "index.json" or (name.startswith("index.") and name.endswith(".json") and name != "index_logo.json"):
        return web.json_response(await asyncio.to_thread(template_index, object_info))
    if name == "index_logo.json":
        return web.json_response({})
    stem, _, suffix = name.rpartition(".")
    if suffix == "json" and stem in template_names():
        return web.json_response(await asyncio.to_thread(template_ui, stem, object_info))
    if suffix == "svg" and stem.endswith("-1") and stem[:-2] in template_names():
        svg = template_thumbnail(await asyncio.to_thread(template_ui, stem[:-2], object_info))
        return web.Response(text=svg, content_type="image/svg+xml")
    raise ApiError(404, "not_found", "No such template", f"templates are {template_names()}")


def add_template_routes(app: web.Application) -> None:
    app.router.add_get("/templates/{name}", templates)
