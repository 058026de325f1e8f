"""The MCP door, driven by the `mcp` SDK's own client over stdio against a real token-protected server: the tools
are the library workflows with their declared schemas, a call returns an image equal to the /prompt reference, and
an invalid argument is a tool error, not a crash."""

from __future__ import annotations

import asyncio
import base64
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server.door_helpers import TOKEN, history_entries, pixels, reference_by_prompt, serve
from tests.server.helpers import ThreadedServer

mcp = pytest.importorskip("mcp", reason="the mcp extra is not installed")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    yield from serve(Path(tmp_path_factory.mktemp("mcp_door")))


async def session_calls(server: ThreadedServer) -> dict[str, Any]:
    params = StdioServerParameters(command=sys.executable, args=[
        "-m", "latentgraph.cli.main", "mcp", "--url", server.url, "--token", TOKEN])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        good = await session.call_tool("txt2img", {"prompt": "a red circle", "seed": 31, "steps": 2})
        bad = await session.call_tool("txt2img", {"seed": -5, "steps": "many"})
        unknown = await session.call_tool("no_such_workflow", {})
        checkpoints = await session.call_tool("list_checkpoints", {})
        return {"tools": tools, "good": good, "bad": bad, "unknown": unknown, "checkpoints": checkpoints}


def test_stdio_client_lists_workflow_tools_and_gets_the_reference_image(server) -> None:
    before = set(history_entries(server))
    result = asyncio.run(session_calls(server))
    tools = result["tools"]
    assert {"txt2img", "img2img", "list_workflows", "list_checkpoints", "job_status"} <= set(tools)
    assert tools["txt2img"].input_schema["properties"]["seed"]["type"] == "integer"
    good = result["good"]
    assert not good.is_error
    [image] = [c for c in good.content if c.type == "image"]
    [link] = [c for c in good.content if c.type == "resource_link"]
    assert str(link.uri).startswith(server.url + "/api/view?")
    reference = reference_by_prompt(server, 31, 2, "a red circle")
    assert np.array_equal(pixels(base64.b64decode(image.data)), reference)
    bad = result["bad"]
    assert bad.is_error and "seed" in bad.content[0].text and "steps" in bad.content[0].text
    assert result["unknown"].is_error
    assert "latentgraph-demo.safetensors" in result["checkpoints"].content[0].text
    runs = [e for k, e in history_entries(server).items() if k not in before]
    names = [e["prompt"][3].get("workflow_run", {}).get("name") for e in runs]
    assert names.count("txt2img") == 1  # the refused call queued nothing


async def http_calls(server: ThreadedServer, token: str) -> dict[str, Any]:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, streamable_http_client(server.url + "/mcp", http_client=client) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        good = await session.call_tool("txt2img", {"prompt": "a red circle", "seed": 32, "steps": 2})
        bad = await session.call_tool("txt2img", {"width": 3})
        return {"tools": tools, "good": good, "bad": bad}


def test_http_transport_on_the_server_lists_tools_and_returns_the_reference_image(server) -> None:
    result = asyncio.run(http_calls(server, TOKEN))
    assert {"txt2img", "inpaint", "job_status"} <= result["tools"]
    [image] = [c for c in result["good"].content if c.type == "image"]
    assert np.array_equal(pixels(base64.b64decode(image.data)), reference_by_prompt(server, 32, 2, "a red circle"))
    assert result["bad"].is_error and "width" in result["bad"].content[0].text
    # the server's token guards /mcp too: refused before any MCP handling
    request = urllib.request.Request(server.url + "/mcp", data=b"{}", method="POST", headers={
        "Authorization": "Bearer wrong-token", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
