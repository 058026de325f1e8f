"""The routes the editor calls besides the protocol ones: user state, templates, first run, UI-format prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from latentgraph.server.routes_static import frontend_dir
from latentgraph.server.routes_templates import WORKFLOWS_DIR, template_names

from tests.server.helpers import finished, image_prompt, receive_until

DATA = Path(__file__).parent / "data"


async def test_settings_persist_under_the_base_directory(client, base_dir: Path) -> None:
    assert (await (await client.get("/api/settings")).json())["Comfy.Notification.ShowVersionUpdates"] is False
    assert (await client.post("/api/settings", json={"Comfy.ColorPalette": "light", "a.b": 1})).status == 200
    assert (await client.post("/api/settings/Comfy.TutorialCompleted", json=True)).status == 200
    assert await (await client.get("/api/settings/Comfy.ColorPalette")).json() == "light"
    assert await (await client.get("/settings/missing")).json() is None
    stored = json.loads((base_dir / "user" / "default" / "comfy.settings.json").read_text())
    assert stored == {"Comfy.ColorPalette": "light", "a.b": 1, "Comfy.TutorialCompleted": True}


async def test_users_is_single_user_mode(client) -> None:
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}


async def test_userdata_write_list_read_move_delete(client, base_dir: Path) -> None:
    workflow = (DATA / "ui_txt2img_v1.json").read_bytes()
    answer = await client.post("/api/userdata/workflows%2Fmine.json?overwrite=false&full_info=true", data=workflow)
    assert answer.status == 200 and (await answer.json())["path"] == "workflows/mine.json"
    assert (await client.post("/api/userdata/workflows%2Fmine.json?overwrite=false", data=b"{}")).status == 409
    listing = await (await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")).json()
    assert [entry["path"] for entry in listing] == ["mine.json"] and listing[0]["size"] == len(workflow)
    assert await (await client.get("/api/userdata?dir=workflows")).json() == ["mine.json"]
    assert await (await client.get("/api/userdata/workflows%2Fmine.json")).read() == workflow
    moved = await client.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fsub%2Fyours.json")
    assert moved.status == 200 and await moved.json() == "workflows/sub/yours.json"
    assert (base_dir / "user" / "default" / "workflows" / "sub" / "yours.json").read_bytes() == workflow
    assert (await client.delete("/api/userdata/workflows%2Fsub%2Fyours.json")).status == 204
    assert (await client.get("/api/userdata/workflows%2Fsub%2Fyours.json")).status == 404
    assert await (await client.get("/api/userdata?dir=nothing-here")).json() == []


@pytest.mark.parametrize("name", ["..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx", "C:%5Cx"])
async def test_userdata_paths_cannot_leave_the_user_folder(client, base_dir: Path, name: str) -> None:
    assert (await client.post(f"/api/userdata/{name}", data=b"x")).status == 400
    assert (await client.get(f"/api/userdata/{name}")).status == 400
    assert not (base_dir.parent / "secret.txt").exists()


async def test_files_the_editor_reads_at_boot_exist_for_a_new_user(client) -> None:
    for path, content_type in [("/api/userdata/user.css", "text/css"), ("/user.css", "text/css"),
                               ("/api/userdata/comfy.templates.json", "application/json")]:
        answer = await client.get(path)
        assert answer.status == 200 and answer.content_type == content_type
    for path in ["/api/i18n", "/api/global_subgraphs", "/api/workflow_templates", "/internal/folder_paths",
                 "/internal/logs/raw", "/internal/files/input", "/api/experiment/models",
                 "/api/experiment/models/checkpoints", "/templates/index_logo.json"]:
        assert (await client.get(path)).status == 200, path
    script = await client.get((await (await client.get("/api/extensions")).json())[0])
    assert script.status == 200 and "registerExtension" in await script.text()
    kinds = {entry["name"] for entry in await (await client.get("/api/experiment/models")).json()}
    assert "checkpoints" in kinds
    assert "photo.png" in await (await client.get("/internal/files/input")).json()


async def test_template_index_lists_our_workflows_in_ui_format(client) -> None:
    index = await (await client.get("/templates/index.json")).json()
    names = [t["name"] for t in index[0]["templates"]]
    assert names == sorted(template_names(), key=lambda n: (n != "txt2img", n)) and names[0] == "txt2img"
    assert all({"name", "title", "description", "mediaType", "mediaSubtype"} <= set(t) for t in index[0]["templates"])
    for name in names:
        ui = await (await client.get(f"/templates/{name}.json")).json()
        api = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
        assert {str(n["id"]) for n in ui["nodes"]} == set(api)
        thumb = await client.get(f"/templates/{name}-1.svg")
        assert thumb.status == 200 and (await thumb.text()).startswith("<svg")
    assert (await client.get("/templates/nope.json")).status == 404


async def test_first_visit_is_sent_to_txt2img_then_not_again(client) -> None:
    first = await client.get("/", allow_redirects=False)
    if frontend_dir() is None:
        assert first.status == 200 and "pip install -e .[editor]" in await first.text()
        return
    assert first.status == 302 and first.headers["Location"] == "./?template=txt2img"
    assert (await client.get("/?template=txt2img", allow_redirects=False)).status == 200
    await client.post("/api/settings/Comfy.TutorialCompleted", json=True)
    again = await client.get("/", allow_redirects=False)
    assert again.status == 200 and "<div id=\"vue-app\">" in await again.text()


async def test_post_prompt_accepts_the_editor_format(client, base_dir: Path) -> None:
    from latentgraph.engine.workflow_format import api_to_ui

    info = await (await client.get("/api/object_info")).json()
    ui = api_to_ui(image_prompt("fromui"), info)
    ws = await client.ws_connect("/ws?clientId=ui-test")
    answer = await client.post("/api/prompt", json={"prompt": ui, "client_id": "ui-test"})
    assert answer.status == 200, await answer.text()
    prompt_id = (await answer.json())["prompt_id"]
    await receive_until(ws, finished({prompt_id}))  # the closing message comes once the record is in history
    await ws.close()
    history = (await (await client.get(f"/api/history/{prompt_id}")).json())[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert history["prompt"][2]["3"]["inputs"]["images"] == ["2", 0]
    assert history["prompt"][3]["extra_pnginfo"]["workflow"] == ui


async def test_post_prompt_conversion_error_names_the_node(client) -> None:
    ui = json.loads((DATA / "ui_mute_bypass.json").read_text())
    ui["nodes"][0]["type"] = "NotANode"
    answer = await client.post("/api/prompt", json={"prompt": ui})
    assert answer.status == 400
    body = await answer.json()
    assert "node 1 (NotANode)" in body["error"]["details"] and body["node_errors"]["1"]["class_type"] == "NotANode"
