"""Library workflows over HTTP, against a real server on 127.0.0.1: listing with JSON Schemas, runs with named
inputs (refused by input name with nothing queued, or queued and followed to image URLs), and one typed operation
per workflow in /openapi.json."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentgraph.nodes import workflow_nodes
from latentgraph.server.state import STATE
from openapi_spec_validator import validate as validate_openapi
from PIL import Image

from tests.server.helpers import ThreadedServer, finished, options_for, receive_until, write_input_image
from tests.waiting import wait_for_event

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"
SHIPPED = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def image_workflow() -> dict:
    """A cheap declared workflow (no model): LoadImage -> ImageScale -> SaveImage, inputs width and method."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 24,
                                                     "height": 0, "crop": "disabled"}, "_meta": {"title": "Resize"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}},
        "10": {"class_type": "WorkflowInput", "inputs": {"name": "width", "target": "Resize.width",
                                                         "description": "new width"}},
        "11": {"class_type": "WorkflowInput", "inputs": {"name": "method", "target": "2.upscale_method"}},
        "12": {"class_type": "WorkflowInput", "inputs": {"name": "source", "target": "1.image"}},
        "13": {"class_type": "WorkflowOutput", "inputs": {"name": "scaled", "source": "3"}},
    }


def write_user_workflow(base_dir: Path, name: str, prompt: dict) -> Path:
    path = base_dir / "user" / "default" / "workflows" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prompt))
    return path


async def pixels(client, url: str) -> np.ndarray:
    answer = await client.get(url)
    assert answer.status == 200, await answer.text()
    return np.asarray(Image.open(io.BytesIO(await answer.read())).convert("RGB"))


async def test_listing_gives_every_shipped_workflow_with_schemas(client) -> None:
    listing = await (await client.get("/api/workflows")).json()
    by_name = {entry["name"]: entry for entry in listing}
    assert set(SHIPPED) <= set(by_name)
    txt2img = by_name["txt2img"]
    assert txt2img["label"] == "1.0" and len(txt2img["version"]) == 12 and txt2img["hash"].startswith(
        txt2img["version"])
    seed = txt2img["inputs"]["properties"]["seed"]
    assert seed == {"title": "seed", "description": seed["description"], "type": "integer", "minimum": 0,
                    "maximum": 2**64 - 1, "default": 42}
    assert txt2img["inputs"]["properties"]["checkpoint"]["enum"] == ["latentgraph-demo.safetensors"]
    assert txt2img["outputs"]["properties"]["image"]["x-type"] == "IMAGE"
    one = await (await client.get("/api/workflows/txt2img")).json()
    assert one["versions"][-1]["version"] == txt2img["version"]
    assert (await client.get("/api/workflows/nope")).status == 404


async def test_bad_inputs_are_refused_by_input_name_and_nothing_is_queued(client) -> None:
    answer = await client.post("/api/workflows/txt2img/runs", json={
        "seed": -1, "steps": "many", "nope": 1, "checkpoint": "missing.safetensors", "prompt": "fine"})
    assert answer.status == 400
    body = await answer.json()
    assert body["error"]["type"] == "invalid_inputs"
    kinds = {name: [e["type"] for e in errors] for name, errors in body["input_errors"].items()}
    assert kinds == {"seed": ["value_smaller_than_min"], "steps": ["invalid_input_type"],
                     "nope": ["unknown_input"], "checkpoint": ["value_not_in_list"]}
    assert body["input_errors"]["seed"][0]["extra_info"]["input_name"] == "seed"
    assert body["node_errors"] == {}
    jobs = await (await client.get("/api/jobs")).json()
    assert jobs["pagination"]["total"] == 0
    assert (await client.post("/api/workflows/txt2img/runs", data="[1]")).status == 400
    assert (await client.post("/api/workflows/txt2img/runs?wait=-3", json={})).status == 400
    assert (await client.post("/api/workflows/nope/runs", json={})).status == 404
    assert (await client.post("/api/workflows/txt2img@nope99/runs", json={})).status == 404


async def warmed_up(client) -> None:
    """Waits for the server's start-up warm-up: it validates the shipped workflows in a thread, and a request
    validating at the same moment races it on diffusers' lazy import (a bug outside these routes, reported)."""
    assert await asyncio.to_thread(client.server.app[STATE].worker.warmed.wait, 120), "no warm-up within 120 s"


async def test_a_run_with_named_inputs_is_the_prompt_with_those_widgets_set(client) -> None:
    await warmed_up(client)
    ws = await client.ws_connect("/ws?clientId=bob")
    values = {"seed": 7, "steps": 2, "prompt": "a small green star on the left, on a black background"}
    answer = await client.post("/api/workflows/txt2img/runs?wait=300&client_id=bob", json=values)
    assert answer.status == 200, await answer.text()
    run = await answer.json()
    assert run["status"] == "completed" and run["workflow"] == "txt2img" and run["error"] is None
    [image] = run["outputs"]["image"]
    assert image["url"].startswith("/api/view?") and image["filename"].startswith("txt2img_")
    by_name = await pixels(client, image["url"])
    messages = await receive_until(ws, finished({run["id"]}))
    assert any(m.get("type") == "progress" and m["data"]["prompt_id"] == run["id"] for m in messages)
    assert await (await client.get(f"/api/workflows/txt2img/runs/{run['id']}")).json() == run
    assert (await client.get(f"/api/workflows/img2img/runs/{run['id']}")).status == 404

    # The same workflow edited by node id and queued on /prompt is the same computation: its output node is a
    # cache hit (same content key, so nothing upstream runs either), and the image is the same.
    prompt = json.loads(TXT2IMG.read_text())
    prompt["3"]["inputs"].update(seed=7, steps=2)
    prompt["6"]["inputs"]["text"] = values["prompt"]
    queued = await (await client.post("/prompt", json={"prompt": prompt, "client_id": "bob"})).json()
    await receive_until(ws, finished({queued["prompt_id"]}))
    entry = (await (await client.get(f"/history/{queued['prompt_id']}")).json())[queued["prompt_id"]]
    cached = next(m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached")
    assert cached == ["9"]
    assert np.array_equal(by_name, await pixels(client, "/api/view?" + "&".join(
        f"{k}={v}" for k, v in entry["outputs"]["9"]["images"][0].items())))

    # A different seed is a different image.
    other = await (await client.post("/api/workflows/txt2img/runs?wait=300", json={**values, "seed": 8})).json()
    assert not np.array_equal(by_name, await pixels(client, other["outputs"]["image"][0]["url"]))


async def test_without_wait_the_run_is_queued_and_followed(client, base_dir: Path) -> None:
    write_user_workflow(base_dir, "scale", image_workflow())
    ws = await client.ws_connect("/ws?clientId=follower")  # hears the run: it is queued without a client id
    answer = await client.post("/api/workflows/scale/runs", json={"width": 10})
    assert answer.status == 202
    run = await answer.json()
    assert run["status"] in ("pending", "in_progress", "completed")
    await receive_until(ws, finished({run["id"]}))  # a run's id is its prompt's; sent once its record is in history
    await ws.close()
    run = await (await client.get(f"/api/workflows/scale/runs/{run['id']}")).json()
    assert run["status"] == "completed"
    assert (await pixels(client, run["outputs"]["scaled"][0]["url"])).shape == (5, 10, 3)


async def test_openapi_has_one_typed_operation_per_workflow(client, base_dir: Path) -> None:
    write_user_workflow(base_dir, "scale", image_workflow())
    spec = await (await client.get("/openapi.json")).json()
    validate_openapi(spec)
    listing = {e["name"]: e for e in await (await client.get("/api/workflows")).json()}
    for name in [*SHIPPED, "scale"]:
        operation = spec["paths"][f"/workflows/{name}/runs"]["post"]
        assert operation["operationId"] == f"run_{name}"
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert spec["components"]["schemas"][ref.rsplit("/", 1)[1]] == listing[name]["inputs"]
    scale = spec["components"]["schemas"]["Inputs_scale"]["properties"]
    assert scale["width"]["maximum"] == 16384 and scale["method"]["enum"][0] == "nearest-exact"


@pytest.fixture(scope="module")
def cheap_server(tmp_path_factory: pytest.TempPathFactory):
    """A fast-starting server (image nodes only, plus the declaration nodes) with the cheap declared workflow."""
    base = tmp_path_factory.mktemp("fuzz")
    write_input_image(base)
    write_user_workflow(base, "scale", image_workflow())
    options = options_for(base, full=False)
    for cls in (workflow_nodes.WorkflowInput, workflow_nodes.WorkflowOutput, workflow_nodes.WorkflowInfo):
        options.registry.register(cls)
    with ThreadedServer(options) as server:
        yield server


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=6)
BODIES = st.dictionaries(st.sampled_from(["width", "method", "source", "other"]), JSON, max_size=4) | JSON


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, wait=st.sampled_from(["", "0", "0.5", "abc", "-1", "1e9", "nan", "true"]),
       ref=st.sampled_from(["scale", "scale@zz", "nope", "scale@" + "0" * 12]))
def test_no_body_makes_a_server_error(cheap_server, body, wait, ref) -> None:
    url = f"{cheap_server.url}/api/workflows/{ref}/runs?" + urllib.parse.urlencode({"wait": wait})
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    assert status < 500, text
    if status == 400 and "input_errors" in json.loads(text):  # errors name inputs the caller sent
        assert isinstance(body, dict) and set(json.loads(text)["input_errors"]) <= set(body)


async def test_a_callback_gets_exactly_one_accepted_call_after_transient_failures(client, base_dir: Path,
                                                                                   aiohttp_server) -> None:
    calls: list[tuple[dict, str]] = []
    accepted = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        calls.append((await request.json(), request.headers.get("Idempotency-Key", "")))
        if len(calls) >= 3:
            accepted.set()
        return web.Response(status=500 if len(calls) <= 2 else 200)  # fails twice, then accepts

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = await aiohttp_server(receiver, host="127.0.0.1")
    write_user_workflow(base_dir, "scale", image_workflow())
    answer = await client.post("/api/workflows/scale/runs", params={"callback": str(server.make_url("/hook"))},
                               json={"width": 10})
    run = await answer.json()
    await wait_for_event(accepted, 20, "the callback's third call (two refused, then accepted)")
    await asyncio.sleep(2.5)  # the next retry would have come 2 s after the third call: none may come
    assert len(calls) == 3
    assert all(body["id"] == run["id"] and body["status"] == "completed" and key == run["id"] for body, key in calls)
    assert calls[-1][0]["outputs"]["scaled"][0]["url"].startswith("/api/view?")
    bad = await client.post("/api/workflows/scale/runs", params={"callback": "file:///etc/passwd"}, json={})
    assert bad.status == 400


async def test_an_idempotency_key_queues_once(client, base_dir: Path) -> None:
    write_user_workflow(base_dir, "scale", image_workflow())
    headers = {"Idempotency-Key": "order-17"}
    first = await client.post("/api/workflows/scale/runs?wait=60", json={"width": 12}, headers=headers)
    again = await client.post("/api/workflows/scale/runs?wait=60", json={"width": 12}, headers=headers)
    assert first.status == again.status == 200
    assert (await first.json())["id"] == (await again.json())["id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert (await (await client.get("/api/jobs")).json())["pagination"]["total"] == 1
    reused = await client.post("/api/workflows/scale/runs", json={"width": 13}, headers=headers)
    assert reused.status == 409 and (await reused.json())["error"]["type"] == "idempotency_key_reused"
    other = await client.post("/api/workflows/scale/runs?wait=60&idempotency_key=order-18", json={"width": 12})
    assert (await other.json())["id"] != (await first.json())["id"]
    assert (await (await client.get("/api/jobs")).json())["pagination"]["total"] == 2
    assert (await client.post("/api/workflows/scale/runs", json={}, headers={"Idempotency-Key": "a b"})).status == 400


async def test_post_prompt_takes_a_callback_and_an_idempotency_key(client, aiohttp_server) -> None:
    calls: list[dict] = []
    accepted = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        calls.append(await request.json())
        if len(calls) >= 2:
            accepted.set()
        return web.Response(status=503 if len(calls) == 1 else 204)

    receiver = web.Application()
    receiver.router.add_post("/done", hook)
    server = await aiohttp_server(receiver, host="127.0.0.1")
    body = {"prompt": image_workflow(), "idempotency_key": "batch-1", "callback_url": str(server.make_url("/done"))}
    first = await client.post("/prompt", json=body)
    assert first.status == 200, await first.text()
    prompt_id = (await first.json())["prompt_id"]
    again = await client.post("/prompt", json=body)
    assert again.status == 200 and (await again.json())["prompt_id"] == prompt_id
    assert again.headers["Idempotent-Replayed"] == "true"
    header = await client.post("/prompt", json={k: v for k, v in body.items() if k != "idempotency_key"},
                               headers={"Idempotency-Key": "batch-1"})
    assert (await header.json())["prompt_id"] == prompt_id
    changed = {**body, "prompt": {**image_workflow(), "3": {**image_workflow()["3"], "inputs": {
        "images": ["2", 0], "filename_prefix": "other"}}}}
    assert (await client.post("/prompt", json=changed)).status == 409
    assert (await client.post("/prompt", json={**body, "callback_url": "ftp://x"})).status == 400
    await wait_for_event(accepted, 10, "the callback's retry after the refused first call")
    await asyncio.sleep(1.2)  # a further retry would come 1 s after the accepted call: none may
    assert len(calls) == 2 and all(c["prompt_id"] == prompt_id for c in calls)
    assert calls[-1]["status"]["status_str"] == "success" and calls[-1]["outputs"]["3"]["images"]
    assert (await (await client.get("/api/jobs")).json())["pagination"]["total"] == 1
