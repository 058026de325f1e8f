"""Safe defaults: path traversal refused for /view and uploads, a token guards every route and the WebSocket,
cross-site browser requests and DNS-rebinding host names are refused, and malformed /prompt bodies never 5xx."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.error
import urllib.request

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentgraph.server.app import create_app
from PIL import Image

from tests.server.helpers import ThreadedServer, image_prompt, options_for

TRAVERSAL_NAMES = [
    "../latentgraph.sqlite3", "..", "../../etc/passwd", "/etc/passwd", "\\..\\latentgraph.sqlite3",
    "..\\latentgraph.sqlite3", "C:\\Windows\\win.ini", "c:/windows/win.ini", "%2e%2e/latentgraph.sqlite3",
    "%2e%2e%2flatentgraph.sqlite3", "%252e%252e%252flatentgraph.sqlite3", "..%2flatentgraph.sqlite3",
    "..%5clatentgraph.sqlite3", "photo.png\x00.txt", "~/.ssh/id_rsa", "a/../../latentgraph.sqlite3", ".",
]
TRAVERSAL_SUBFOLDERS = ["..", "../..", "/etc", "a/../..", "%2e%2e", "..%2f..", "\\..", "C:\\", "~"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def secret_files(base_dir):
    """Files a traversal would reach: a secret beside the folders, and symlinks leaving input/ and output/."""
    (base_dir / "secret.txt").write_text("secret")
    outside = base_dir.parent / f"{base_dir.name}-outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(png())
    os.symlink(base_dir / "secret.txt", base_dir / "input" / "link.png")
    os.symlink(outside, base_dir / "input" / "escape")
    (base_dir / "output").mkdir(exist_ok=True)
    os.symlink(outside, base_dir / "output" / "escape")
    return outside


async def test_view_refuses_traversal(client, secret_files):
    for kind in ("input", "output", "temp"):
        for name in TRAVERSAL_NAMES:
            response = await client.get("/view", params={"filename": name, "type": kind})
            assert response.status in (400, 404), (kind, name, response.status)
            assert b"secret" not in await response.read()
        for sub in TRAVERSAL_SUBFOLDERS:
            response = await client.get("/view", params={"filename": "secret.txt", "subfolder": sub, "type": kind})
            assert response.status == 400, (kind, sub)
    for params in ({"filename": "link.png", "type": "input"}, {"filename": "x.png", "subfolder": "escape",
                                                               "type": "input"},
                   {"filename": "x.png", "subfolder": "escape", "type": "output"}):
        response = await client.get("/view", params=params)
        assert response.status == 400, params
    raw = await client.get("/view?filename=..%2Flatentgraph.sqlite3&type=input")
    assert raw.status == 400
    assert (await client.get("/view", params={"filename": "x", "type": "models"})).status == 400
    assert (await client.get("/view", params={"filename": "photo.png", "type": "input"})).status == 200


async def test_view_never_serves_active_content_inline(client, base_dir):
    (base_dir / "output").mkdir(exist_ok=True)
    (base_dir / "output" / "page.html").write_text("<script>alert(1)</script>")
    response = await client.get("/view", params={"filename": "page.html"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in response.headers["Content-Security-Policy"]


async def test_upload_refuses_traversal(client, base_dir, secret_files):
    for name in (n for n in TRAVERSAL_NAMES if "\x00" not in n):  # the client library refuses NUL in headers
        data = aiohttp.FormData()
        data.add_field("image", png(), filename=name, content_type="image/png")
        response = await client.post("/upload/image", data=data)
        assert response.status == 400, (name, response.status)
    for sub in [*TRAVERSAL_SUBFOLDERS, "escape"]:
        data = aiohttp.FormData()
        data.add_field("image", png(), filename="ok.png", content_type="image/png")
        data.add_field("subfolder", sub)
        response = await client.post("/upload/image", data=data)
        assert response.status == 400, (sub, response.status)
    data = aiohttp.FormData()
    data.add_field("image", png(), filename="link.png", content_type="image/png")
    data.add_field("overwrite", "true")
    assert (await client.post("/upload/image", data=data)).status == 400
    assert (base_dir / "secret.txt").read_text() == "secret"
    assert not (secret_files / "ok.png").exists()
    assert not [p for p in base_dir.parent.rglob("ok.png")]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_token_required_on_every_route(aiohttp_client, base_dir):
    app = create_app(options_for(base_dir, token="s3cret-token"))
    client = await aiohttp_client(app)
    routes = {(r.method, _concrete(r.resource.canonical)) for r in app.router.routes() if r.method != "HEAD"}
    assert len(routes) > 40
    for method, path in sorted(routes):
        response = await client.request(method, path)
        assert response.status == 401, (method, path, response.status)
        assert (await response.json())["error"]["type"] == "unauthorized"
        wrong = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert wrong.status == 401, (method, path)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws")
    assert refused.value.status == 401

    good = {"Authorization": "Bearer s3cret-token"}
    assert (await client.get("/queue", headers=good)).status == 200
    assert (await client.get("/api/queue", params={"token": "s3cret-token"})).status == 200
    basic = {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret-token").decode()}  # token as password
    assert (await client.get("/system_stats", headers=basic)).status == 200
    ws = await client.ws_connect("/ws?clientId=t&token=s3cret-token")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_token_from_environment(aiohttp_client, base_dir, monkeypatch):
    monkeypatch.setenv("LATENTGRAPH_TOKEN", "from-env")
    client = await aiohttp_client(create_app(options_for(base_dir)))
    assert (await client.get("/queue")).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer from-env"})).status == 200


async def test_query_token_sets_cookie_for_the_browser(aiohttp_client, base_dir):
    client = await aiohttp_client(create_app(options_for(base_dir, token="tok")))
    first = await client.get("/features?token=tok")
    assert first.status == 200 and "latentgraph_token" in first.cookies
    assert (await client.get("/features")).status == 200  # the cookie jar now carries it


async def test_cross_origin_requests_refused(client):
    port = client.server.port
    evil = {"Origin": "http://evil.example"}
    response = await client.post("/prompt", json={"prompt": image_prompt()}, headers=evil)
    assert response.status == 403 and (await response.json())["error"]["type"] == "cross_origin_refused"
    assert (await client.get("/queue")).status == 200
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    for origin in ("null", f"http://127.0.0.1:{port + 1}", "http://localhost.evil.com", f"http://[::1]:{port}"):
        assert (await client.post("/interrupt", headers={"Origin": origin})).status == 403, origin
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", headers=evil)
    same = await client.post("/interrupt", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 200


async def test_allowed_origin_and_dns_rebinding(aiohttp_client, base_dir):
    client = await aiohttp_client(create_app(options_for(base_dir, allowed_origins=["http://localhost:5173"])))
    assert (await client.post("/interrupt", headers={"Origin": "http://localhost:5173"})).status == 200
    rebinding = {"Host": f"attacker.example:{client.server.port}",
                 "Origin": f"http://attacker.example:{client.server.port}"}
    response = await client.get("/history", headers=rebinding)
    assert response.status == 403 and (await response.json())["error"]["type"] == "forbidden_host"
    assert (await client.get("/history", headers={"Host": f"localhost:{client.server.port}"})).status == 200


MALFORMED = [
    b"", b"not json", b"[]", b"null", b"1", b'"prompt"', b"{", b'{"prompt": []}', b'{"prompt": "x"}',
    b'{"prompt": {}}', b'{"prompt": {"1": 5}}', b'{"prompt": {"1": {"class_type": 5}}}',
    b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": []}}}', b'{"prompt": {"1": {"inputs": {}}}}',
    b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}',
    b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 99]}}}}',
    b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": [1, "x"]}}}}',
    b'{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "../../etc/passwd"}}}}',
    b'{"prompt": {"1": {"class_type": "ImageScale", "inputs": {"width": NaN}}}}',
    b'{"prompt": {"1": {"class_type": "ImageScale", "inputs": {"width": 1e999}}}}',
    b'{"prompt": {}, "client_id": 5}', b'{"prompt": {}, "extra_data": []}', b'{"prompt": {}, "number": "x"}',
    b'{"prompt": {}, "front": "yes"}', b'{"prompt": {}, "prompt_id": "../x"}', b'{"prompt": {}, "prompt_id": 7}',
    b'{"prompt": {}, "partial_execution_targets": "3"}', b"\xff\xfe\x00", b"[" * 100000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
]


async def test_odd_but_valid_fields_are_handled(client):
    ok = image_prompt("odd")
    for body in ({"prompt": ok, "number": 1e300}, {"prompt": ok, "number": -(2**60)}):
        assert (await client.post("/prompt", json=body)).status == 400
    accepted = await client.post("/prompt", json={"prompt": ok, "extra_data": {"client_id": {"x": 1},
                                                                              "create_time": "soon"}})
    assert accepted.status == 200
    assert (await client.post("/prompt", json={"prompt": ok, "number": 2**52})).status == 200
    assert (await client.post("/prompt", json={"prompt": ok})).status == 200
    assert (await client.get("/jobs")).status == 200


async def test_malformed_prompt_corpus_gets_4xx(client):
    for body in MALFORMED:
        response = await client.post("/prompt", data=body, headers={"Content-Type": "application/json"})
        assert 400 <= response.status < 500, (body[:60], response.status)
        assert "error" in await response.json()
    huge = b'{"prompt": {"1": {"class_type": "x", "inputs": {"t": "' + b"a" * (33 * 1024 * 1024) + b'"}}}}'
    response = await client.post("/prompt", data=huge)
    assert response.status == 413
    for path in ("/queue", "/history", "/interrupt", "/free"):
        response = await client.post(path, data=b"{nope")
        assert response.status == 400, path
    assert (await client.post("/queue", json={"delete": "x"})).status == 400
    assert (await client.post("/history", json={"delete": [1, 2]})).status == 400
    for query in ("max_items=x", "max_items=0", "offset=-5"):
        assert (await client.get(f"/history?{query}")).status == 400, query
    for query in ("status=bogus", "limit=0", "limit=x", "offset=-1", "sort_by=name", "sort_order=up"):
        assert (await client.get(f"/jobs?{query}")).status == 400, query
    assert (await client.get("/view")).status == 400
    assert (await client.get("/view", params={"filename": "photo.png", "channel": "z", "type": "input"})).status == 400
    assert (await client.get("/no/such/route")).status == 404
    assert (await (await client.get("/no/such/route")).json())["error"]["type"] == "http_404"
    assert (await client.put("/prompt")).status == 405


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
class_types = st.sampled_from(["LoadImage", "SaveImage", "ImageScale", "PreviewImage", "ImageInvert", "Nope", ""])
node = st.fixed_dictionaries({"class_type": class_types | json_values},
                             optional={"inputs": st.dictionaries(
                                 st.sampled_from(["image", "images", "width", "height", "upscale_method", "crop",
                                                  "filename_prefix", "x"]),
                                 json_values | st.tuples(st.sampled_from(["1", "2", "3", "9"]),
                                                         st.integers(-1, 3)).map(list), max_size=5),
                                       "_meta": json_values})
prompts = st.dictionaries(st.sampled_from(["1", "2", "3", ""]), node | json_values, max_size=4)
valid_with_odd_fields = st.fixed_dictionaries(
    {"prompt": st.just(image_prompt("fuzz"))},
    optional={"client_id": json_values, "extra_data": st.dictionaries(st.sampled_from(
        ["client_id", "extra_pnginfo", "create_time", "x"]), json_values, max_size=3) | json_values,
        "prompt_id": json_values | st.text(max_size=130), "front": json_values, "number": json_values,
        "partial_execution_targets": json_values | st.lists(st.sampled_from(["1", "2", "3", "9"]), max_size=3)})
bodies = st.one_of(
    json_values,
    valid_with_odd_fields,
    st.fixed_dictionaries({"prompt": prompts | json_values},
                          optional={"client_id": json_values, "extra_data": json_values, "prompt_id": json_values,
                                    "front": json_values, "number": json_values,
                                    "partial_execution_targets": json_values}),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    from tests.server.helpers import write_input_image

    write_input_image(base)
    with ThreadedServer(options_for(base)) as server:
        yield server


def _post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_prompt_bodies_never_5xx(fuzz_server, body):
    assert _post(fuzz_server.url + "/prompt", json.dumps(body).encode()) < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_raw_bytes_never_5xx(fuzz_server, raw):
    assert _post(fuzz_server.url + "/api/prompt", raw) < 500
