"""Interrupting a running prompt ends it within one step, and the next prompt runs; live previews reach only the
clients that asked for them, in the frame type they asked for."""

from __future__ import annotations

import asyncio
import json
import struct

from tests.server.helpers import SlowImage, finished, image_prompt, receive_until, slow_prompt


async def test_interrupt_ends_within_one_step_and_next_prompt_runs(client):
    ws = await client.ws_connect("/ws?clientId=i")
    slow = (await (await client.post("/prompt", json={"prompt": slow_prompt(steps=100000, delay_ms=2),
                                                      "client_id": "i"})).json())["prompt_id"]
    after = (await (await client.post("/prompt", json={"prompt": image_prompt("after"), "client_id": "i"})).json()
             )["prompt_id"]
    await receive_until(ws, lambda ms: any(m["type"] == "progress" and m["data"]["value"] >= 3 for m in ms))
    assert (await client.post("/interrupt", json={"prompt_id": slow})).status == 200
    steps_when_interrupted = sum(1 for pid, _ in SlowImage.steps_done if pid == slow)

    messages = await receive_until(ws, finished({slow, after}))
    steps_total = sum(1 for pid, _ in SlowImage.steps_done if pid == slow)
    assert steps_total <= steps_when_interrupted + 1, "the node ran more than one step after the interrupt"
    interrupted = [m for m in messages if m["type"] == "execution_interrupted"]
    assert [m["data"]["prompt_id"] for m in interrupted] == [slow]
    assert interrupted[0]["data"]["node_id"] == "1" and interrupted[0]["data"]["node_type"] == "SlowImage"
    assert any(m["type"] == "execution_success" and m["data"]["prompt_id"] == after for m in messages)
    history = await (await client.get("/history")).json()
    assert history[slow]["status"]["status_str"] == "error" and history[after]["status"]["status_str"] == "success"
    assert (await (await client.get(f"/jobs/{slow}")).json())["status"] == "cancelled"
    cancelled = await (await client.get("/jobs", params={"status": "cancelled"})).json()
    assert [job["id"] for job in cancelled["jobs"]] == [slow]
    await ws.close()


async def test_global_interrupt_and_cancel_running_job(client):
    ws = await client.ws_connect("/ws?clientId=g")
    first = (await (await client.post("/prompt", json={"prompt": slow_prompt(steps=100000, delay_ms=2, value=0.1),
                                                       "client_id": "g"})).json())["prompt_id"]
    await receive_until(ws, lambda ms: any(m["type"] == "progress" for m in ms))
    assert (await client.post("/interrupt")).status == 200
    second = (await (await client.post("/prompt", json={"prompt": slow_prompt(steps=100000, delay_ms=2, value=0.2),
                                                        "client_id": "g"})).json())["prompt_id"]
    await receive_until(ws, lambda ms: any(m["type"] == "progress" and m["data"]["prompt_id"] == second for m in ms))
    job = await (await client.get(f"/jobs/{second}")).json()
    assert job["status"] == "in_progress" and job["progress"]["prompt_id"] == second
    assert (await (await client.post(f"/jobs/{second}/cancel")).json())["status"] == "interrupting"
    messages = await receive_until(ws, finished({second}))
    assert any(m["type"] == "execution_interrupted" and m["data"]["prompt_id"] == second for m in messages)
    history = await (await client.get("/history")).json()
    assert {first, second} <= set(history)
    # ComfyUI's record of an interrupted prompt (main.py's task_done after execution.py's interrupt handling):
    # status_str "error", completed false, the run's messages ending in execution_interrupted with the node that
    # stopped; nothing finished before it, so "executed" is empty and no output is recorded.
    for prompt_id in (first, second):
        record = history[prompt_id]
        status = record["status"]
        assert status["status_str"] == "error" and status["completed"] is False
        assert [name for name, _ in status["messages"]][0] == "execution_start"
        name, data = status["messages"][-1]
        assert name == "execution_interrupted"
        assert {k: data[k] for k in ("prompt_id", "node_id", "node_type", "executed")} == {
            "prompt_id": prompt_id, "node_id": "1", "node_type": "SlowImage", "executed": []}
        assert isinstance(data["timestamp"], int) and record["outputs"] == {}
    await ws.close()


async def test_previews_only_for_clients_that_asked(client):
    plain = await client.ws_connect("/ws?clientId=plain")
    jpeg = await client.ws_connect("/ws?clientId=jpeg")
    tagged = await client.ws_connect("/ws?clientId=tagged")
    for ws in (plain, jpeg, tagged):
        await ws.receive_json()
    await jpeg.send_json({"type": "feature_flags", "data": {}})
    await tagged.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    for ws in (jpeg, tagged):
        reply = await ws.receive_json()
        assert reply["type"] == "feature_flags" and reply["data"]["supports_preview_metadata"] is True

    ids = {}
    for sid in ("plain", "jpeg", "tagged"):
        body = {"prompt": slow_prompt(steps=4, delay_ms=1, preview=True, prefix=sid), "client_id": sid}
        ids[sid] = (await (await client.post("/prompt", json=body)).json())["prompt_id"]
    received = {sid: await receive_until(ws, finished({ids[sid]}))
                for sid, ws in (("plain", plain), ("jpeg", jpeg), ("tagged", tagged))}

    assert not [m for m in received["plain"] if isinstance(m, bytes)]
    jpeg_frames = [m for m in received["jpeg"] if isinstance(m, bytes)]
    assert jpeg_frames and all(struct.unpack(">II", f[:8]) == (1, 1) and f[8:10] == b"\xff\xd8" for f in jpeg_frames)
    tagged_frames = [m for m in received["tagged"] if isinstance(m, bytes)]
    assert tagged_frames
    for frame in tagged_frames:
        kind, length = struct.unpack(">II", frame[:8])
        metadata = json.loads(frame[8:8 + length])
        assert kind == 4 and frame[8 + length:8 + length + 2] == b"\xff\xd8"
        assert metadata["prompt_id"] == ids["tagged"] and metadata["node_id"] == "1"
        assert metadata["image_type"] == "image/jpeg"
    for ws in (plain, jpeg, tagged):
        await ws.close()


async def test_reconnect_replaces_socket_and_reports_running_node(client):
    first = await client.ws_connect("/ws?clientId=same")
    await first.receive_json()
    prompt_id = (await (await client.post("/prompt", json={"prompt": slow_prompt(steps=100000, delay_ms=2),
                                                           "client_id": "same"})).json())["prompt_id"]
    await receive_until(first, lambda ms: any(m["type"] == "progress" for m in ms))
    second = await client.ws_connect("/ws?clientId=same")
    hello = await second.receive_json()
    assert hello["type"] == "status" and hello["data"]["sid"] == "same"
    current = await second.receive_json()
    assert current["type"] == "executing" and current["data"] == {"node": "1", "display_node": "1",
                                                                 "prompt_id": prompt_id}
    await asyncio.wait_for(first.receive(), 10)  # the old socket is closed by the server
    await client.post("/interrupt")
    await receive_until(second, finished({prompt_id}))
    await second.close()
