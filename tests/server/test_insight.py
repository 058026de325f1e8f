"""The server's account of a run: the estimate before it, node reasons on the WebSocket, reasons and costs in
/history and /jobs, timings in SQLite; on the real txt2img workflow with the bundled tiny model."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
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
        assert await asyncio.to_thread(warmed.wait, 120), "the warm-up did not finish within 120 s"

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


def test_check_estimate_prices_the_nodes_from_the_servers_timings(tmp_path, capsys):
    from latentgraph.cli.main import main
    from latentgraph.nodes.memory_probe import TorchMemoryProbe
    from latentgraph.server.options import ServerOptions
    from latentgraph.server.timings import TimingStore

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(txt2img(steps=4, size=64)))
    assert main(["check", "--estimate", "--base-dir", str(tmp_path), str(workflow)]) == 0
    out = capsys.readouterr().out
    assert "7 node(s) would run" in out and "total: at least 0.00 s; 7 node(s) without recorded timings" in out

    device = TorchMemoryProbe().device
    store = TimingStore(ServerOptions(base_dir=tmp_path).database_path)
    ms = {"CheckpointLoaderSimple": 500.0, "EmptyLatentImage": 1.0, "CLIPTextEncode": 20.0, "KSampler": 300.0,
          "VAEDecode": 40.0, "SaveImage": 10.0}
    store.record(device, {str(i): {"class_type": c, "status": "ran", "wall_ms": t, "shapes": None,
                                   "steps": 2 if c == "KSampler" else None,
                                   "pixels": None if c in ("CheckpointLoaderSimple", "CLIPTextEncode") else 64 * 64}
                          for i, (c, t) in enumerate(ms.items())})
    store.close()
    assert main(["check", "--estimate", "--json", "--base-dir", str(tmp_path), str(workflow)]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    by_class = {n["class_type"]: n for n in estimate["nodes"]}
    assert by_class["KSampler"]["basis"] == "scaled" and by_class["KSampler"]["expected_ms"] == 600.0  # 2 -> 4 steps
    assert by_class["VAEDecode"]["basis"] == "same size" and by_class["VAEDecode"]["expected_ms"] == 40.0
    assert estimate["complete"] is True and estimate["total_ms"] == 500 + 1 + 20 + 20 + 600 + 40 + 10


def test_the_shipped_workflows_open_at_a_zoom_where_titles_are_drawn(tmp_path):
    """The editor fits a template into view at 0.75 x viewport / graph size (LiteGraph's fitToBounds) and draws
    titles and widgets only above its low-quality threshold (8 px / 14 px font = 0.571): a 1920x1080 window must
    show every shipped workflow above it. Unlinked declaration nodes go collapsed in a band under the graph."""
    from latentgraph.engine.workflow_format import api_to_ui
    from latentgraph.nodes import load_registry, make_environment

    info = load_registry().object_info(make_environment(tmp_path))
    for path in sorted(TXT2IMG.parent.glob("*.json")):
        ui = api_to_ui(json.loads(path.read_text()), info)
        boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + (200 if n["flags"].get("collapsed") else n["size"][0]),
                  n["pos"][1] + (0 if n["flags"].get("collapsed") else n["size"][1])) for n in ui["nodes"]]
        width = max(b[2] for b in boxes) - min(b[0] for b in boxes)
        height = max(b[3] for b in boxes) - min(b[1] for b in boxes)
        scale = 0.75 * min(1880 / max(width, 300), 1000 / max(height, 300))  # the canvas beside the side bar
        assert scale >= 0.6, (path.name, width, height, scale)
        linked = {n for link in ui["links"] for n in (link[1], link[3])}
        assert all(n["flags"].get("collapsed") for n in ui["nodes"] if n["id"] not in linked), path.name


async def test_the_terminal_panel_gets_new_log_lines_after_subscribing(client):
    ws = await client.ws_connect("/ws?clientId=terminal")
    await ws.receive_json()
    answer = await client.patch("/internal/logs/subscribe", json={"enabled": True, "clientId": "terminal"})
    assert answer.status == 200
    logging.getLogger("latentgraph.test").warning("a line for the terminal")
    messages = await receive_until(ws, lambda ms: any(isinstance(m, dict) and m["type"] == "logs" for m in ms),
                                   timeout=10)
    logs = [m for m in messages if isinstance(m, dict) and m["type"] == "logs"]
    assert logs[0]["data"]["entries"][0]["m"] == "WARNING latentgraph.test: a line for the terminal\n"
    raw = await (await client.get("/internal/logs/raw")).json()
    assert raw["entries"][-1]["m"].endswith("a line for the terminal\n")

    await client.patch("/internal/logs/subscribe", json={"enabled": False, "clientId": "terminal"})
    logging.getLogger("latentgraph.test").warning("not sent")
    with pytest.raises(asyncio.TimeoutError):
        await receive_until(ws, lambda ms: any(isinstance(m, dict) and m["type"] == "logs" for m in ms), timeout=1)
    assert (await client.patch("/internal/logs/subscribe", json={"enabled": "yes"})).status == 400
    await ws.close()
