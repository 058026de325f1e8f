"""SaveImageWebsocket as ComfyUI's websocket image example reads it: while the node is executing, the client that
queued the prompt gets one binary frame per image, type 1 and format 2 then a full-size PNG, with no feature flags
sent; nobody else gets it, nothing is written to disk, and a re-queued prompt sends the images again."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from tests.server.helpers import finished, image_prompt, receive_until

SOLID = (0, 200, 0)  # write_input_image's colour: any scale of it is the same colour, give or take the last bit


def websocket_prompt() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                     "width": 48, "height": 0, "crop": "disabled"}},
        "save_image_websocket_node": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
    }


def frames_by_node(messages: list) -> list[tuple[str | None, bytes]]:
    """(the node executing when it came, frame) for each binary frame, as ComfyUI's example script tracks it."""
    current, found = None, []
    for message in messages:
        if isinstance(message, dict):
            if message["type"] == "executing":
                current = message["data"]["node"]
        else:
            found.append((current, message))
    return found


async def test_images_reach_only_the_queueing_client_whole(client, base_dir):
    alice = await client.ws_connect("/ws?clientId=alice")
    bob = await client.ws_connect("/ws?clientId=bob")
    await bob.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})

    for _ in range(2):  # the second run is not served from the cache: the images are sent again
        body = await (await client.post("/prompt", json={"prompt": websocket_prompt(), "client_id": "alice"})).json()
        prompt_id = body["prompt_id"]
        messages = await receive_until(alice, finished({prompt_id}))
        frames = frames_by_node(messages)
        assert [node for node, _ in frames] == ["save_image_websocket_node"]
        header, png = frames[0][1][:8], frames[0][1][8:]
        assert struct.unpack(">II", header) == (1, 2)
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (48, 24)
        pixels = np.asarray(image.convert("RGB")).astype(int)
        assert np.abs(pixels - np.array(SOLID)).max() <= 1  # lossless: a JPEG would smear the colour further
        history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
        assert history["status"]["status_str"] == "success"
        output = base_dir / "output"
        assert not (output.exists() and list(output.rglob("*.png"))), "SaveImageWebsocket wrote a file"

    # bob's own prompt ends after alice's: anything of alice's sent to bob would have come before its end
    own = (await (await client.post("/prompt", json={"prompt": image_prompt("bob"), "client_id": "bob"})).json())
    bob_messages = await receive_until(bob, finished({own["prompt_id"]}))
    assert not [m for m in bob_messages if isinstance(m, bytes)], "another client got the image"
    await alice.close()
    await bob.close()
