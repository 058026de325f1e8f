"""The server's account of a run: the estimate before it, node reasons on the WebSocket, reasons and costs in
/history and /jobs, timings in SQLite; on the real txt2img workflow with the bundled tiny model."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from latentgraph.server.queue import PromptQueue
from latentgraph.server.state import STATE

from tests.server.helpers import finished, receive_until

TXT2IMG = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


def txt2img(seed: int = 1, steps: int = 2, size: int = 64) -> dict[str, Any]:
    prompt = json.loads(TXT2IMG.read_text())
    prompt["3"]["inputs"].update(steps=steps, seed=seed)
    prompt["5"]["inputs"].update(width=size, height=size)
    return prompt


async def run(client: Any, ws: Any, prompt: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    answer = await (await client.post("/prompt", json={"prompt": prompt, "client_id": "insight"})).json()
    prompt_id = answer["prompt_id"]
    messages = await receive_until(ws, finished({prompt_id}), timeout=600)
    return prompt_id, [m for m in messages if isinstance(m, dict)]


async def estimate(client: Any, prompt: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/prompt/estimate", json={"prompt": prompt})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_estimate_reasons_history_jobs_and_timings_across_runs(client):
    ws = await client.ws_connect("/ws?clientId=insight")
    await ws.receive_json()
    warmed = getattr(client.app[STATE].worker, "warmed", None)  # start-up imports must not race this test's
    if warmed is not None:
        await asyncio.to_thread(warmed.wait, 120)

    cold = await estimate(client, txt2img(seed=1))
    assert sorted(n["class_type"] for n in cold["nodes"]) == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage"])
    assert cold["complete"] is False and cold["unknown"] == cold["run"]  # no history yet: unknown, not a guess
    assert all(n["basis"] == "unknown" and n["expected_ms"] is None for n in cold["nodes"])

    first_id, _ = await run(client, ws, txt2img(seed=1))
    unchanged = await estimate(client, txt2img(seed=1))
    assert unchanged["run"] == [] and unchanged["total_ms"] == 0 and unchanged["complete"] is True
    assert unchanged["cached"] == ["9"]

    changed = await estimate(client, txt2img(seed=2))
    assert [n["class_type"] for n in changed["nodes"]] == ["KSampler", "VAEDecode", "SaveImage"]
    assert changed["complete"] is True and all(n["basis"] == "exact" for n in changed["nodes"])
    assert changed["nodes"][0]["reason"]["text"] == "seed changed 1 -> 2"
    assert changed["total_ms"] > 0
    assert abs(changed["total_ms"] - sum(n["expected_ms"] for n in changed["nodes"])) < 0.2

    second_id, messages = await run(client, ws, txt2img(seed=2))
    reasons = [m["data"] for m in messages if m["type"] == "latentgraph.node_reason"]
    assert reasons[0]["prompt_id"] == second_id
    assert reasons[0]["nodes"]["4"]["status"] == "cached"
    assert reasons[0]["nodes"]["3"] == {"class_type": "KSampler", "status": "pending",
                                        "reason": changed["nodes"][0]["reason"]}
    ran = {node: report for event in reasons[1:] for node, report in event["nodes"].items()}
    assert sorted(ran) == ["3", "8", "9"] and all(r["status"] == "ran" for r in ran.values())
    assert ran["3"]["wall_ms"] > 0 and ran["3"]["steps"] == 2 and ran["3"]["pixels"] == 64 * 64

    history = await (await client.get(f"/api/history/{second_id}")).json()
    nodes = history[second_id]["latentgraph"]["nodes"]
    assert nodes["3"]["reason"]["text"] == "seed changed 1 -> 2" and nodes["3"]["status"] == "ran"
    assert nodes["8"]["reason"]["text"] == "parent 3 re-ran (samples)"
    assert nodes["9"]["cache_bytes"] > 0
    job = await (await client.get(f"/api/jobs/{first_id}")).json()
    assert {n: r["status"] for n, r in job["latentgraph"]["nodes"].items()} == dict.fromkeys(
        ["3", "4", "5", "6", "7", "8", "9"], "ran")
    assert {r["reason"]["kind"] for r in job["latentgraph"]["nodes"].values()} == {"new"}

    timings = await (await client.get("/api/latentgraph/timings")).json()
    counts = {row["class_type"]: row["count"] for row in timings}
    assert counts["KSampler"] == 2 and counts["CheckpointLoaderSimple"] == 1 and counts["CLIPTextEncode"] == 2
    await ws.close()


async def test_estimate_of_an_invalid_prompt_is_a_400_naming_the_node(client):
    prompt = txt2img()
    prompt["3"]["inputs"]["steps"] = -4
    response = await client.post("/prompt/estimate", json={"prompt": prompt})
    assert response.status == 400
    assert "3" in (await response.json())["node_errors"]
    assert (await client.post("/prompt/estimate", json={"nope": 1})).status == 400


async def test_the_editor_extension_is_listed_and_served(client):
    scripts = await (await client.get("/api/extensions")).json()
    assert "/latentgraph/insight.js" in scripts
    response = await client.get("/latentgraph/insight.js")
    assert response.status == 200 and "latentgraph.node_reason" in await response.text()


def test_a_queue_database_from_before_node_reports_gains_the_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE prompts (prompt_id TEXT PRIMARY KEY, number REAL NOT NULL, state TEXT NOT NULL, "
               "prompt TEXT NOT NULL, extra_data TEXT NOT NULL, outputs_to_execute TEXT NOT NULL, client_id TEXT, "
               "workflow_id TEXT, create_time INTEGER NOT NULL, start_time INTEGER, end_time INTEGER, "
               "done_seq INTEGER, status_str TEXT, completed INTEGER, messages TEXT, outputs TEXT, meta TEXT, "
               "error TEXT, outputs_count INTEGER, preview_output TEXT)")
    db.commit()
    db.close()
    queue = PromptQueue(path)
    queue.add("p", {}, {}, [])
    queue.claim_next()
    queue.set_nodes("p", {"1": {"status": "ran"}})
    queue.finish("p", "success", True, [], {}, {}, None)
    assert queue.lookup("p")["latentgraph"] == {"nodes": {"1": {"status": "ran"}}}
    queue.close()
