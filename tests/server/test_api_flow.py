"""The main path, as a client drives it: queue a workflow, follow it on the WebSocket, fetch the image, find the
prompt in /history and /jobs; plus the shapes of the other ComfyUI routes."""

from __future__ import annotations

import io

from PIL import Image

from tests.server.helpers import finished, image_prompt, receive_until, slow_prompt


def events_of(messages: list, prompt_id: str) -> list[tuple]:
    return [(m["type"], m["data"].get("node")) for m in messages
            if isinstance(m, dict) and m["type"] != "status" and not m["type"].startswith("latentgraph.")
            and m["data"].get("prompt_id") == prompt_id]  # our own extra messages are tested in test_insight


async def test_queue_follow_view_history_jobs(client):
    ws = await client.ws_connect("/ws?clientId=alice")
    hello = await ws.receive_json()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "alice"}}

    response = await client.post("/prompt", json={"prompt": image_prompt("flow"), "client_id": "alice"})
    assert response.status == 200
    body = await response.json()
    prompt_id = body["prompt_id"]
    assert body["node_errors"] == {} and isinstance(body["number"], int)

    messages = await receive_until(ws, finished({prompt_id}))
    assert events_of(messages, prompt_id) == [
        ("execution_start", None), ("execution_cached", None),
        ("executing", "1"), ("executing", "2"), ("executing", "3"), ("executed", "3"),
        ("execution_success", None), ("executing", None),
    ]
    statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages if m["type"] == "status"]
    assert statuses[0] == 1 and statuses[-1] == 0
    last_status = max(i for i, m in enumerate(messages) if m["type"] == "status")
    assert last_status < len(messages) - 1, "the queue status goes out before the closing executing message"
    executed = next(m for m in messages if m["type"] == "executed")
    image_ref = executed["data"]["output"]["images"][0]
    assert image_ref["type"] == "output" and image_ref["filename"].startswith("flow_")

    view = await client.get("/view", params=image_ref)
    assert view.status == 200 and view.content_type == "image/png"
    assert view.headers["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(await view.read())).size == (24, 12)

    history = await (await client.get(f"/history/{prompt_id}")).json()
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["outputs"]["3"]["images"] == [image_ref]
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["3"]
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert prompt_id in await (await client.get("/api/history")).json()

    jobs = await (await client.get("/jobs", params={"status": "completed"})).json()
    assert [j["id"] for j in jobs["jobs"]] == [prompt_id]
    assert jobs["pagination"] == {"offset": 0, "limit": None, "total": 1, "has_more": False}
    assert jobs["jobs"][0]["outputs_count"] == 1 and jobs["jobs"][0]["preview_output"]["filename"] == \
        image_ref["filename"]
    job = await (await client.get(f"/api/jobs/{prompt_id}")).json()
    assert job["status"] == "completed" and job["outputs"]["3"]["images"] == [image_ref]
    await ws.close()


async def test_second_run_is_cached_and_output_still_reported(client):
    ws = await client.ws_connect("/ws?clientId=c")
    first = (await (await client.post("/prompt", json={"prompt": image_prompt("a"), "client_id": "c"})).json())
    second = (await (await client.post("/prompt", json={"prompt": image_prompt("b"), "client_id": "c"})).json())
    messages = await receive_until(ws, finished({first["prompt_id"], second["prompt_id"]}))
    cached = next(m for m in messages if m["type"] == "execution_cached"
                  and m["data"]["prompt_id"] == second["prompt_id"])
    assert "2" in cached["data"]["nodes"] and "3" not in cached["data"]["nodes"]
    assert ("executing", "3") in events_of(messages, second["prompt_id"])
    await ws.close()


async def test_invalid_prompt_is_refused_with_node_errors(client):
    prompt = image_prompt()
    prompt["2"]["inputs"]["width"] = -5
    prompt["4"] = {"class_type": "NoSuchNode", "inputs": {}}
    response = await client.post("/api/prompt", json={"prompt": prompt})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_smaller_than_min"
    assert (await (await client.get("/queue")).json()) == {"queue_running": [], "queue_pending": []}


async def test_pending_and_running_prompts_show_in_history_and_queue(client):
    ws = await client.ws_connect("/ws?clientId=blocker")
    blocker = (await (await client.post("/prompt", json={"prompt": slow_prompt(steps=100000, delay_ms=2),
                                                          "client_id": "blocker"})).json())
    waiting = (await (await client.post("/prompt", json={"prompt": image_prompt("w")})).json())
    front = (await (await client.post("/prompt", json={"prompt": image_prompt("f"), "front": True})).json())
    assert front["number"] < 0

    await receive_until(ws, lambda ms: any(m["type"] == "progress" for m in ms))  # the blocker is running
    queue = await (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [blocker["prompt_id"]]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], waiting["prompt_id"]]
    assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 3}}

    running = await (await client.get(f"/history/{blocker['prompt_id']}")).json()
    assert running[blocker["prompt_id"]]["status"] == {"status_str": "running", "completed": False, "messages": []}
    pending = await (await client.get(f"/history/{waiting['prompt_id']}")).json()
    assert pending[waiting["prompt_id"]]["status"]["status_str"] == "pending"
    assert await (await client.get("/history/unknown-id")).json() == {}
    assert await (await client.get("/history")).json() == {}

    jobs = await (await client.get("/jobs", params={"status": "pending,in_progress", "limit": "2"})).json()
    assert jobs["pagination"]["total"] == 3 and jobs["pagination"]["has_more"] is True and len(jobs["jobs"]) == 2

    assert (await client.post("/queue", json={"delete": [waiting["prompt_id"]]})).status == 200
    cancel = await client.post(f"/jobs/{front['prompt_id']}/cancel")
    assert (await cancel.json())["status"] == "cancelled"
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    assert (await client.post("/interrupt", json={"prompt_id": "not-running"})).status == 200
    assert (await (await client.get("/queue")).json())["queue_running"], "interrupting another id is a no-op"
    assert (await client.post("/interrupt")).status == 200
    await receive_until(ws, finished({blocker["prompt_id"]}))  # sent once its record is in history
    assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0
    history = await (await client.get(f"/history/{blocker['prompt_id']}")).json()
    status = history[blocker["prompt_id"]]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"
    assert (await client.post(f"/jobs/{blocker['prompt_id']}/cancel")).status == 409
    assert (await client.get("/jobs/nope")).status == 404

    assert (await client.post("/history", json={"delete": [blocker["prompt_id"]]})).status == 200
    assert await (await client.get(f"/history/{blocker['prompt_id']}")).json() == {}
    await ws.close()


async def test_history_paging_and_limit(aiohttp_client, base_dir):
    from latentgraph.server.app import create_app

    from tests.server.helpers import options_for

    client = await aiohttp_client(create_app(options_for(base_dir, history_limit=3)))
    ws = await client.ws_connect("/ws?clientId=h")
    ids = []
    for i in range(5):
        body = await (await client.post("/prompt", json={"prompt": image_prompt(f"h{i}"), "client_id": "h"})).json()
        ids.append(body["prompt_id"])
    await receive_until(ws, finished(set(ids)))
    assert list(await (await client.get("/history")).json()) == ids[2:]
    assert list(await (await client.get("/history", params={"max_items": "2"})).json()) == ids[3:]
    assert list(await (await client.get("/history", params={"max_items": "1", "offset": "0"})).json()) == ids[2:3]
    assert (await client.post("/history", json={"clear": True})).status == 200
    assert await (await client.get("/history")).json() == {}
    await ws.close()


async def test_info_routes(client):
    info = await (await client.get("/object_info")).json()
    assert "photo.png" in info["LoadImage"]["input"]["required"]["image"][0]
    one = await (await client.get("/api/object_info/SaveImage")).json()
    assert list(one) == ["SaveImage"] and one["SaveImage"]["output_node"] is True
    assert await (await client.get("/object_info/Nope")).json() == {}
    stats = await (await client.get("/system_stats")).json()
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
            "embedded_python", "argv"} <= set(stats["system"])
    assert stats["devices"] and {"name", "type", "vram_total", "vram_free"} <= set(stats["devices"][0])
    assert await (await client.get("/features")).json() == {"supports_preview_metadata": True,
                                                             "max_upload_size": 100 * 1024 * 1024}
    assert "checkpoints" in await (await client.get("/models")).json()
    checkpoints = await (await client.get("/models/checkpoints")).json()
    assert isinstance(checkpoints, list) and all(isinstance(name, str) for name in checkpoints)
    assert (await client.get("/models/nope")).status == 404
    assert await (await client.get("/embeddings")).json() == []
    assert await (await client.get("/api/extensions")).json() == ["/latentgraph/default-workflow.js",
                                                                  "/latentgraph/insight.js"]
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/prompt" in spec["paths"] and "/jobs/{job_id}/cancel" in spec["paths"]


async def test_free_between_prompts(client):
    assert (await client.post("/free", json={"unload_models": True, "free_memory": True})).status == 200
    assert (await client.post("/free", json={"unload_models": "yes"})).status == 400
