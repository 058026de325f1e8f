"""An MCP server (stdio) in front of a running latentgraph server: every library workflow is a tool.

`python -m latentgraph.server.mcp_door --url http://127.0.0.1:8188 [--token TOKEN]` (token also from
$LATENTGRAPH_TOKEN) speaks MCP on stdin/stdout with the official `mcp` SDK (`pip install 'latentgraph[mcp]'`).
It holds no engine of its own: each tool call is `POST /api/workflows/{name}/runs?wait=...` on the server, so a
run started by an agent is in that server's /queue, /history and /jobs, shares its cache and is seen by its
WebSocket watchers. A workflow tool's input schema is the workflow's declared interface (from `GET /api/workflows`);
an image output comes back as MCP image content plus a resource link to its `/api/view` URL. Invalid arguments are
the server's `input_errors`, returned as a tool error (`is_error`), never a protocol failure. Extra tools:
`list_workflows`, `list_checkpoints` and `job_status`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TOKEN_ENV = "LATENTGRAPH_TOKEN"
RUN_WAIT_S = 600
TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")
EXTRA_TOOLS = ("list_workflows", "list_checkpoints", "job_status")


class Backend:
    """Plain HTTP calls to the latentgraph server (blocking; the MCP handlers run them in threads)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=RUN_WAIT_S + 30) as answer:
                raw = answer.read()
                status = answer.status
                kind = answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        decoded = json.loads(raw or b"null") if kind.startswith("application/json") else None
        return status, decoded, raw

    def workflows(self) -> list[dict[str, Any]]:
        status, listing, _ = self.request("GET", "/api/workflows")
        if status != 200:
            raise RuntimeError(f"GET /api/workflows answered {status}")
        return [entry for entry in listing if "inputs" in entry]


def tool_name(workflow: str) -> str:
    """MCP tool names allow letters, digits, _ and -: a workflow in a subfolder (`a/b`) becomes `a__b`."""
    return TOOL_NAME.sub("_", workflow.replace("/", "__"))


def _text(value: Any) -> Any:
    import mcp_types as types

    return types.TextContent(type="text", text=value if isinstance(value, str) else json.dumps(value, indent=1))


def build_server(backend: Backend) -> Any:
    """The MCP server: tools listed from the library on every request, so a newly saved workflow appears."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    def tools() -> list[Any]:
        found = [types.Tool(name=tool_name(e["name"]), description=e.get("description") or f"Run {e['name']}",
                            input_schema=e["inputs"]) for e in backend.workflows()]
        found += [
            types.Tool(name="list_workflows", description="Library workflows with their input and output schemas",
                       input_schema={"type": "object", "properties": {}}),
            types.Tool(name="list_checkpoints", description="Installed checkpoints (model files)",
                       input_schema={"type": "object", "properties": {}}),
            types.Tool(name="job_status", description="Status, outputs and error of a job by id",
                       input_schema={"type": "object", "properties": {"id": {"type": "string"}},
                                     "required": ["id"]}),
        ]
        return found

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=await asyncio.to_thread(tools))

    def call(name: str, arguments: dict[str, Any]) -> Any:
        def error(message: Any) -> Any:
            return types.CallToolResult(content=[_text(message)], is_error=True)

        if name == "list_workflows":
            return types.CallToolResult(content=[_text(backend.workflows())])
        if name == "list_checkpoints":
            status, info, _ = backend.request("GET", "/api/object_info/CheckpointLoaderSimple")
            names = (info or {}).get("CheckpointLoaderSimple", {}).get("input", {}).get("required", {}).get(
                "ckpt_name", [[]])[0]
            return types.CallToolResult(content=[_text(names)]) if status == 200 else error(info)
        if name == "job_status":
            status, job, _ = backend.request("GET", f"/api/jobs/{urllib.parse.quote(str(arguments.get('id')))}")
            return types.CallToolResult(content=[_text(job)], is_error=status != 200)
        by_tool = {tool_name(e["name"]): e["name"] for e in backend.workflows()}
        if name not in by_tool:
            return error(f"unknown tool {name!r}")
        path = f"/api/workflows/{urllib.parse.quote(by_tool[name])}/runs?wait={RUN_WAIT_S}"
        status, run, _ = backend.request("POST", path, arguments)
        if status != 200 or run.get("status") != "completed":
            return error(run)
        content: list[Any] = [_text({"id": run["id"], "workflow": run["workflow"], "version": run["version"]})]
        for files in run["outputs"].values():
            for item in files:
                view_status, _, raw = backend.request("GET", item["url"])
                if view_status == 200:
                    content.append(types.ImageContent(type="image", data=base64.b64encode(raw).decode("ascii"),
                                                      mime_type="image/png"))
                content.append(types.ResourceLink(type="resource_link", name=item["filename"],
                                                  uri=backend.url + item["url"], mime_type="image/png"))
        return types.CallToolResult(content=content)

    async def call_tool(ctx: Any, params: Any) -> Any:
        return await asyncio.to_thread(call, params.name, dict(params.arguments or {}))

    return Server("latentgraph", on_list_tools=list_tools, on_call_tool=call_tool)


async def run_stdio(backend: Backend) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(backend)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentgraph-mcp", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="the running latentgraph server")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"its token (default ${TOKEN_ENV})")
    args = parser.parse_args(argv)
    asyncio.run(run_stdio(Backend(args.url, args.token)))


if __name__ == "__main__":
    main()


# -- the HTTP transport, mounted on the server ------------------------------------------------------------------

MCP_PATH = "/mcp"


def add_mcp_route(app: Any, options: Any) -> bool:
    """Mounts MCP's streamable HTTP transport at /mcp on the aiohttp app (stateless, JSON answers), behind the
    server's own token, origin and host middleware; tool calls go to this same server over loopback HTTP. Returns
    False (and mounts nothing) when the `mcp` extra is not installed."""
    try:
        import mcp.server.lowlevel  # noqa: F401
    except ImportError:
        return False
    from aiohttp import web
    from latentgraph.server.jsonio import read_body
    from latentgraph.server.operations import operation
    from latentgraph.server.routing import add_api_routes

    backend = Backend("", options.token)
    server = build_server(backend)
    asgi = server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True, json_response=True)

    async def lifespan(app: web.Application) -> Any:
        # The manager's anyio task group must be entered and left by one task; aiohttp may start and clean up the
        # app in different tasks, so the manager lives in a task of its own.
        started, stop = asyncio.Event(), asyncio.Event()

        async def keep() -> None:
            async with server.session_manager.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(keep())
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # the manager failed to start: say why instead of waiting forever
            waiting.cancel()
            task.result()
        yield
        stop.set()
        await task

    async def handle(request: web.Request) -> web.StreamResponse:
        if not backend.url:  # the server's own address, known once it answers a request
            backend.url = f"{request.scheme}://{request.host}"
        body = await read_body(request, options.max_json_bytes)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": request.scheme, "path": MCP_PATH, "raw_path": MCP_PATH.encode(), "root_path": "",
                 "query_string": request.query_string.encode("latin-1"),
                 "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
                 "client": (request.remote or "", 0), "server": tuple(sockname[:2]) if sockname else None}
        sent_body = False
        answer: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # the client stays connected until the answer is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await asgi(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in answer["headers"]
                   if k.lower() not in (b"content-length", b"transfer-encoding")}
        return web.Response(status=answer["status"], body=bytes(answer["body"]), headers=headers)

    described = operation("MCP streamable HTTP transport (JSON-RPC): library workflows as tools", body=dict[str, Any],
                          body_required=False, response=dict[str, Any], errors=(400, 404, 405, 406),
                          tags=("mcp",))(handle)
    routes = web.RouteTableDef()
    for method in ("GET", "POST", "DELETE"):
        routes.route(method, MCP_PATH)(described)
    app.cleanup_ctx.append(lifespan)
    add_api_routes(app, routes)
    return True
