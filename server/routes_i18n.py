"""`/i18n` and the other things node packages contribute to the editor (subgraph blueprints, their templates).

latentgraph's nodes are plain Python with English names, so each answers empty; the routes exist because the
editor asks for them at boot and would show errors on a 404.
"""

from __future__ import annotations

from aiohttp import web
from latentgraph.server import api_models as M
from latentgraph.server.operations import operation

routes = web.RouteTableDef()


@routes.get("/i18n")
@operation("Translations node packages add to the editor (none)", response=M.Settings, errors=())
async def i18n(request: web.Request) -> web.Response:
    """Translations that node packages add to the editor's; ours are English only."""
    return web.json_response({})


@routes.get("/global_subgraphs")
@operation("Subgraph blueprints node packages ship (none)", response=M.Settings, errors=())
async def global_subgraphs(request: web.Request) -> web.Response:
    """Subgraph blueprints that node packages ship, by id; we ship none."""
    return web.json_response({})


@routes.get("/workflow_templates")
@operation("Templates node packages ship (none; see /templates/index.json)", response=M.Settings, errors=())
async def node_package_templates(request: web.Request) -> web.Response:
    """Templates shipped by node packages, by package; ours are in /templates/index.json instead."""
    return web.json_response({})
