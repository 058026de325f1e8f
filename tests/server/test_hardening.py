"""Issue 18: bodies are read whole or refused, every request has a bounded cost, and hostile input gets a 4xx.

The body tests speak raw HTTP over a socket to a real server on 127.0.0.1, so that a body can arrive in several
TCP writes, chunked, or just over a limit, the way the attack run sent them.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.server.helpers import ThreadedServer, image_prompt, options_for

LIMIT = 64 * 1024
UPLOAD_LIMIT = 96 * 1024


def http(url: str, method: str, path: str, body: bytes = b"", *, parts: int = 1, chunked: bool = False,
         headers: dict[str, str] | None = None, pause_s: float = 0.05, timeout: float = 30.0) -> tuple[int, bytes]:
    """Sends one request over a raw socket, the body in `parts` separate writes (or chunks), and reads the answer."""
    host, port = url.removeprefix("http://").split(":")
    head = {"Host": f"{host}:{port}", "Connection": "close", "Content-Type": "application/json", **(headers or {})}
    if chunked:
        head["Transfer-Encoding"] = "chunked"
    else:
        head.setdefault("Content-Length", str(len(body)))
    step = max(1, -(-len(body) // parts))
    pieces = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + "".join(
            f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n")
        try:
            for piece in pieces:
                time.sleep(pause_s)
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before the whole body went out
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    headers_raw, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers_raw.lower():
        payload = _dechunk(payload)
    return int(status_line.split()[1]), payload


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


@pytest.fixture
def server(base_dir: Path):
    with ThreadedServer(options_for(base_dir, full=False, max_json_bytes=LIMIT,
                                    max_upload_bytes=UPLOAD_LIMIT)) as running:
        yield running


# ---------------------------------------------------------------- 1. bodies read whole, 413 beyond the limit


@pytest.mark.parametrize("parts,chunked", [(2, False), (7, False), (5, True)])
def test_userdata_stores_a_body_sent_in_several_writes_whole(server, base_dir, parts, chunked):
    body = bytes(range(256)) * 8 * 20  # 40 KB, under the limit
    status, answer = http(server.url, "POST", "/userdata/workflows%2Fsplit.json", body, parts=parts, chunked=chunked)
    assert status == 200, answer
    stored = base_dir / "user" / "default" / "workflows" / "split.json"
    assert stored.read_bytes() == body


@pytest.mark.parametrize("parts,chunked", [(2, False), (4, True)])
def test_settings_and_prompt_read_a_body_sent_in_several_writes(server, base_dir, parts, chunked):
    settings = {"Comfy.Test": "x" * 30000, "Comfy.Other": list(range(100))}
    status, answer = http(server.url, "POST", "/settings", json.dumps(settings).encode(), parts=parts,
                          chunked=chunked)
    assert status == 200, answer
    stored = json.loads((base_dir / "user" / "default" / "comfy.settings.json").read_text())
    assert stored["Comfy.Test"] == settings["Comfy.Test"] and stored["Comfy.Other"] == settings["Comfy.Other"]

    body = json.dumps({"prompt": image_prompt(), "client_id": "split", "extra_data": {"pad": "y" * 1000}}).encode()
    status, answer = http(server.url, "POST", "/prompt", body, parts=parts, chunked=chunked)
    assert status == 200, answer
    assert json.loads(answer)["node_errors"] == {}


@pytest.mark.parametrize("path", ["/prompt", "/settings", "/userdata/big.json", "/queue", "/history",
                                  "/interrupt", "/settings/Comfy.X"])
def test_bodies_just_over_the_limit_get_413_whether_announced_or_chunked(server, base_dir, path):
    at_limit = b'{"a": "' + b"z" * (LIMIT - 10) + b'"}'
    assert len(at_limit) == LIMIT - 1
    status, _ = http(server.url, "POST", path, at_limit, parts=3)
    assert status != 413
    over = b'{"a": "' + b"z" * (LIMIT - 8) + b'"}'
    assert len(over) == LIMIT + 1
    status, answer = http(server.url, "POST", path, over, parts=3)
    assert status == 413, answer
    assert json.loads(answer)["error"]["type"] == "body_too_large"
    status, answer = http(server.url, "POST", path, over, parts=3, chunked=True)
    assert status == 413, answer
    if path.startswith("/userdata"):  # the file still holds the last body that was accepted, not a truncation
        assert (base_dir / "user" / "default" / "big.json").read_bytes() == at_limit


def test_a_huge_chunked_body_is_refused_413_early(server):
    """A chunked body far over the limit is answered 413 (it was 400); what follows is discarded, not kept."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /prompt HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/json\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    assert answer.split()[1] == b"413", answer[:300]


def _multipart(name: str, data: bytes, boundary: str = "xyzBOUNDARYxyz") -> tuple[bytes, dict[str, str]]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_upload_in_several_writes_is_stored_whole_and_just_over_the_limit_is_413(server, base_dir):
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.effect_noise((150, 150), 60).convert("RGB").save(buffer, format="PNG")
    png = buffer.getvalue()
    assert 40_000 < len(png) < UPLOAD_LIMIT
    body, headers = _multipart("noise.png", png)
    status, answer = http(server.url, "POST", "/upload/image", body, parts=6, headers=headers)
    assert status == 200, answer
    assert (base_dir / "input" / json.loads(answer)["name"]).read_bytes() == png

    over = png + b"\0" * (UPLOAD_LIMIT + 1 - len(png))
    body, headers = _multipart("over.png", over)
    for chunked in (False, True):
        status, answer = http(server.url, "POST", "/upload/image", body, parts=4, chunked=chunked, headers=headers)
        assert status == 413, answer
    assert not (base_dir / "input" / "over.png").exists()
