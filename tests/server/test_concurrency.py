"""Many clients at once: 20 clients queue 5 prompts each; all complete, history has all 100, and each client
receives execution events only for its own prompts."""

from __future__ import annotations

import asyncio

from tests.server.helpers import finished, image_prompt, receive_until

CLIENTS, PROMPTS = 20, 5


async def test_twenty_clients_five_prompts_each(client):
    async def one_client(index: int) -> tuple[set[str], list]:
        sid = f"client-{index}"
        ws = await client.ws_connect(f"/ws?clientId={sid}")
        assert (await ws.receive_json())["data"]["sid"] == sid
        mine = set()
        for j in range(PROMPTS):
            response = await client.post("/prompt", json={"prompt": image_prompt(f"c{index}_{j}", width=8 + j),
                                                          "client_id": sid})
            assert response.status == 200
            mine.add((await response.json())["prompt_id"])
        messages = await receive_until(ws, finished(mine), timeout=300)
        await ws.close()
        return mine, messages

    results = await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
    all_ids = set().union(*(mine for mine, _ in results))
    assert len(all_ids) == CLIENTS * PROMPTS
    for mine, messages in results:
        scoped = [m for m in messages if m["type"] != "status"]
        assert {m["data"]["prompt_id"] for m in scoped} == mine, "a client saw another client's events"
        succeeded = {m["data"]["prompt_id"] for m in scoped if m["type"] == "execution_success"}
        assert succeeded == mine

    history = await (await client.get("/history")).json()
    assert set(history) == all_ids
    assert all(entry["status"]["status_str"] == "success" for entry in history.values())
    jobs = await (await client.get("/jobs", params={"status": "completed", "limit": "10", "offset": "95"})).json()
    assert jobs["pagination"]["total"] == 100 and len(jobs["jobs"]) == 5 and jobs["pagination"]["has_more"] is False
    assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0
