"""Uploads: stored under input/ (or temp/), verified as images, renamed on a clash unless identical, and a mask
upload merges the mask's alpha into the original image."""

from __future__ import annotations

import io
import json

import aiohttp
from PIL import Image


def png_bytes(color: tuple[int, ...] = (255, 0, 0), mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def form(data: bytes, filename: str = "up.png", **fields: str) -> aiohttp.FormData:
    result = aiohttp.FormData()
    result.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        result.add_field(key, value)
    return result


async def test_upload_rename_identical_and_overwrite(client, base_dir):
    first = await client.post("/upload/image", data=form(png_bytes()))
    assert await first.json() == {"name": "up.png", "subfolder": "", "type": "input"}
    same = await client.post("/api/upload/image", data=form(png_bytes()))
    assert (await same.json())["name"] == "up.png"
    other = await client.post("/upload/image", data=form(png_bytes((0, 0, 255))))
    assert (await other.json())["name"] == "up (1).png"
    third = await client.post("/upload/image", data=form(png_bytes((0, 9, 9))))
    assert (await third.json())["name"] == "up (2).png"
    replaced = await client.post("/upload/image", data=form(png_bytes((0, 255, 0)), overwrite="true"))
    assert (await replaced.json())["name"] == "up.png"
    assert Image.open(base_dir / "input" / "up.png").getpixel((0, 0)) == (0, 255, 0)

    nested = await client.post("/upload/image", data=form(png_bytes(), subfolder="a/b", type="temp"))
    assert await nested.json() == {"name": "up.png", "subfolder": "a/b", "type": "temp"}
    assert (base_dir / "temp" / "a" / "b" / "up.png").is_file()
    info = await (await client.get("/object_info/LoadImage")).json()
    assert "up (1).png" in info["LoadImage"]["input"]["required"]["image"][0]


async def test_upload_rejects_non_images_and_bad_requests(client, base_dir):
    not_image = await client.post("/upload/image", data=form(b"<html><script>alert(1)</script>", "x.png"))
    assert not_image.status == 400 and (await not_image.json())["error"]["type"] == "invalid_image"
    truncated = await client.post("/upload/image", data=form(png_bytes()[:40], "t.png"))
    assert truncated.status == 400
    assert (await client.post("/upload/image", json={"image": "x"})).status == 400
    no_file = aiohttp.FormData()
    no_file.add_field("type", "input")
    assert (await client.post("/upload/image", data=no_file)).status == 400
    assert (await client.post("/upload/image", data=form(png_bytes(), type="models"))).status == 400
    assert not (base_dir / "input" / "x.png").exists() and not (base_dir / "input" / "t.png").exists()


async def test_upload_size_limit(aiohttp_client, base_dir):
    from latentgraph.server.app import create_app

    from tests.server.helpers import options_for

    client = await aiohttp_client(create_app(options_for(base_dir, max_upload_bytes=2000)))
    noisy = Image.effect_noise((200, 200), 64).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    response = await client.post("/upload/image", data=form(buffer.getvalue(), "big.png"))
    assert response.status == 413 and (await response.json())["error"]["type"] == "upload_too_large"
    assert not (base_dir / "input" / "big.png").exists()
    assert (await client.post("/upload/image", data=form(png_bytes(), "small.png"))).status == 200


async def test_upload_mask_puts_alpha_into_original(client, base_dir):
    mask = Image.new("RGBA", (32, 16), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 16, 16))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    response = await client.post("/upload/mask", data=form(buffer.getvalue(), "photo-mask.png", original_ref=ref))
    assert await response.json() == {"name": "photo-mask.png", "subfolder": "", "type": "input"}
    merged = Image.open(base_dir / "input" / "photo-mask.png")
    assert merged.mode == "RGBA" and merged.getpixel((0, 0)) == (0, 200, 0, 0)
    assert merged.getpixel((20, 5)) == (0, 200, 0, 255)
    bad_ref = await client.post("/upload/mask", data=form(buffer.getvalue(), "m.png", original_ref="{nope"))
    assert bad_ref.status == 400
    escaping = json.dumps({"filename": "../latentgraph.sqlite3", "type": "input"})
    assert (await client.post("/upload/mask", data=form(buffer.getvalue(), "m.png", original_ref=escaping))
            ).status == 400
