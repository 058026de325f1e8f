"""The server with the real sampler on the bundled tiny model: live previews from the sampling loop reach the
client that asked for them, and an interrupt during sampling ends the prompt within one step; the next runs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from latentgraph.server.state import STATE

from tests.server.helpers import finished, receive_until

TXT2IMG = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


def txt2img(steps: int, seed: int = 1) -> dict:
    prompt = json.loads(TXT2IMG.read_text())
    prompt["3"]["inputs"].update(steps=steps, seed=seed)
    prompt["5"]["inputs"].update(width=64, height=64)
    return prompt


async def test_interrupt_during_sampling_ends_within_one_step(client):
    ws = await client.ws_connect("/ws?clientId=sd")
    await ws.receive_json()
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    long_id = (await (await client.post("/prompt", json={"prompt": txt2img(steps=500), "client_id": "sd"})).json()
               )["prompt_id"]
    next_id = (await (await client.post("/prompt", json={"prompt": txt2img(steps=2, seed=2), "client_id": "sd"})
                      ).json())["prompt_id"]
    before = await receive_until(ws, lambda ms: any(isinstance(m, dict) and m["type"] == "progress"
                                                    and m["data"]["value"] >= 3 for m in ms), timeout=600)
    assert (await client.post("/interrupt")).status == 200
    running = client.app[STATE].worker.current
    assert running is not None and running.item.prompt_id == long_id
    step_at_interrupt = running.progress["value"]

    after = await receive_until(ws, finished({long_id, next_id}), timeout=600)
    messages = before + after
    long_steps = [m["data"]["value"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
                  and m["data"]["prompt_id"] == long_id]
    assert max(long_steps) <= step_at_interrupt + 1 < 500
    interrupted = [m for m in messages if isinstance(m, dict) and m["type"] == "execution_interrupted"]
    assert [(m["data"]["prompt_id"], m["data"]["node_type"]) for m in interrupted] == [(long_id, "KSampler")]
    assert any(isinstance(m, dict) and m["type"] == "execution_success" and m["data"]["prompt_id"] == next_id
               for m in messages)

    frames = [m for m in messages if isinstance(m, bytes)]
    assert frames, "the sampler's previews reach a client that asked for them"
    kind, length = struct.unpack(">II", frames[0][:8])
    assert kind == 4 and json.loads(frames[0][8:8 + length])["node_id"] == "3"
    assert frames[0][8 + length:8 + length + 2] == b"\xff\xd8"
    await ws.close()
