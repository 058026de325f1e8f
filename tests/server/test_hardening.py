"""Issue 18: bodies are read whole or refused, every request has a bounded cost, and hostile input gets a 4xx.

The body tests speak raw HTTP over a socket to a real server on 127.0.0.1, so that a body can arrive in several
TCP writes, chunked, or just over a limit, the way the attack run sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node, NodeOutput
from latentgraph.engine.types import Image as ImageType
from latentgraph.engine.types import Latent as LatentType
from latentgraph.engine.validate import MAX_DEPENDENT_OUTPUTS, validate
from latentgraph.engine.workflow_format import ConversionError, ui_to_api

from tests.server import hostile
from tests.server.helpers import (
    SlowImage,
    ThreadedServer,
    finished,
    image_prompt,
    make_registry,
    options_for,
    receive_until,
    slow_prompt,
)
from tests.waiting import wait_until

LIMIT = 64 * 1024
DATA = Path(__file__).parent / "data"
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
                time.sleep(pause_s)  # a slow client: the body arrives in separate pieces, as under test
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


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    return json.loads((DATA / "object_info.json").read_text())


@pytest.fixture
def server(base_dir: Path):
    with ThreadedServer(options_for(base_dir, full=False, max_json_bytes=LIMIT, max_prompt_bytes=LIMIT,
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
                     "Connection: close\r\nContent-Type: application/json\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")  # the end, so that the server's lingering read of the rest ends too
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


# ---------------------------------------------------------------- 2. validation near-linear, node and body caps


def _failing_chain(n: int) -> dict[str, Any]:
    """n PreviewImage nodes, each linked to output 0 of the one before (they have no outputs): n failing outputs."""
    return {str(i): {"class_type": "PreviewImage", "inputs": {"images": [str(i - 1), 0]}} for i in range(1, n + 1)}


def test_validation_of_a_chain_of_failing_outputs_is_near_linear() -> None:
    """400 chained bad links took ~20 s before (cubic). Five times the links must cost about five times the CPU
    (linear), far from the 25x of a quadratic or 125x of a cubic check; a ratio in one process, best of three, so
    the machine's speed does not matter."""
    registry = make_registry(full=False)
    env = Environment(Path("."))
    best: dict[int, float] = {}
    gc.collect()
    gc.disable()  # a collection of the whole suite's garbage is not the check's cost
    try:
        for n in (400, 2000):
            for _ in range(3):
                start = time.process_time()
                result = validate(_failing_chain(n), registry, env)
                best[n] = min(best.get(n, float("inf")), time.process_time() - start)
                assert not result.ok and len(result.node_errors) == n
    finally:
        gc.enable()
    assert best[2000] / best[400] < 12, best
    # node 1995 feeds outputs 1995..2000; the list is sorted and capped
    assert result.node_errors["1995"]["dependent_outputs"] == sorted(str(i) for i in range(1995, 2001))
    assert len(result.node_errors["1"]["dependent_outputs"]) == MAX_DEPENDENT_OUTPUTS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 14).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), max_size=2 * n),
    st.lists(st.booleans(), min_size=n, max_size=n))))
def test_dependent_outputs_match_networkx_on_random_graphs_with_cycles(case: Any) -> None:
    """Against an independent reference: an output depends on a node when the node is among its ancestors."""
    n, edges, is_output = case
    prompt: dict[str, Any] = {}
    for i in range(1, n + 1):
        parents = [a for a, b in edges if b == i]
        cls = "PreviewImage" if is_output[i - 1] else "ImageScale"
        inputs: dict[str, Any] = {f"x{k}": [str(p), 0] for k, p in enumerate(parents)}
        inputs["image" if cls == "ImageScale" else "images"] = "not a link"
        prompt[str(i)] = {"class_type": cls, "inputs": inputs}
    result = validate(prompt, make_registry(full=False), Environment(Path(".")))
    graph = nx.DiGraph()
    graph.add_nodes_from(prompt)
    graph.add_edges_from((str(a), str(b)) for a, b in edges)
    outputs = sorted(o for o in prompt if prompt[o]["class_type"] == "PreviewImage")
    for node_id, entry in result.node_errors.items():
        expected = sorted(o for o in outputs if o == node_id or node_id in nx.ancestors(graph, o))
        assert entry["dependent_outputs"] == expected[:MAX_DEPENDENT_OUTPUTS], node_id
    cyclic = {n for c in nx.strongly_connected_components(graph) if len(c) > 1 for n in c}
    cyclic |= {a for a, b in graph.edges if a == b}
    needed = set(outputs).union(*(nx.ancestors(graph, o) for o in outputs)) if outputs else set()
    flagged = {n for n, e in result.node_errors.items() if any(x["type"] == "dependency_cycle" for x in e["errors"])}
    assert flagged == cyclic & needed


def test_validation_stops_at_its_time_budget() -> None:
    result = validate(_failing_chain(50), make_registry(full=False), Environment(Path(".")), time_budget_s=0.0)
    assert not result.ok and result.error["type"] == "validation_timeout"


def test_prompt_node_count_and_body_size_are_capped(base_dir: Path) -> None:
    with ThreadedServer(options_for(base_dir, full=False, max_prompt_nodes=100, max_prompt_bytes=20_000)) as srv:
        status, answer = http(srv.url, "POST", "/prompt", json.dumps({"prompt": _failing_chain(101)}).encode())
        assert status == 413 and json.loads(answer)["error"]["type"] == "too_many_nodes", answer
        status, answer = http(srv.url, "POST", "/prompt", json.dumps({"prompt": _failing_chain(100)}).encode())
        assert status == 400 and len(json.loads(answer)["node_errors"]) == 100, answer
        big = json.dumps({"prompt": image_prompt(), "extra_data": {"pad": "p" * 20_000}}).encode()
        status, answer = http(srv.url, "POST", "/prompt", big, chunked=True, parts=3)
        assert status == 413, answer


# ---------------------------------------------------------------- 4. subgraph expansion counted before expanding


def _nested_subgraphs(levels: int, copies: int) -> dict[str, Any]:
    """An editor workflow whose subgraph k holds `copies` instances of subgraph k+1; the last holds a SaveImage."""
    definitions = []
    for level in range(levels):
        if level == levels - 1:
            nodes = [{"id": 1, "type": "PreviewImage", "inputs": [], "outputs": [], "widgets_values": []}]
        else:
            nodes = [{"id": i + 1, "type": f"sg{level + 1}", "inputs": [], "outputs": []} for i in range(copies)]
        definitions.append({"id": f"sg{level}", "nodes": nodes, "links": []})
    return {"nodes": [{"id": 1, "type": "sg0", "inputs": [], "outputs": []}], "links": [],
            "definitions": {"subgraphs": definitions}, "version": 0.4}


def test_subgraph_expansion_is_refused_before_expanding(object_info: dict[str, Any]) -> None:
    workflow = _nested_subgraphs(9, 8)  # 8^8 = 16.7 M nodes from a few KB
    assert len(json.dumps(workflow)) < 5000
    start = time.process_time()
    with pytest.raises(ConversionError, match="expands to more than 100000 nodes"):
        ui_to_api(workflow, object_info)
    assert time.process_time() - start < 0.5
    assert len(ui_to_api(_nested_subgraphs(4, 8), object_info)) == 8**3
    with pytest.raises(ConversionError, match="more than 500 nodes"):
        ui_to_api(_nested_subgraphs(4, 8), object_info, max_nodes=500)
    with pytest.raises(ConversionError, match="40 levels deep"):
        ui_to_api(_nested_subgraphs(40, 1), object_info)
    looped = _nested_subgraphs(3, 2)
    looped["definitions"]["subgraphs"][2]["nodes"].append({"id": 9, "type": "sg0", "inputs": [], "outputs": []})
    with pytest.raises(ConversionError, match="contains itself"):
        ui_to_api(looped, object_info)


# ---------------------------------------------------------------- 8. what answered 500 answers 4xx


def _reroute_chain(n: int, loop: bool = False) -> dict[str, Any]:
    """LoadImage -> n Reroutes -> PreviewImage (with `loop`, the first reroute is fed by the last instead)."""
    nodes = [{"id": 1, "type": "LoadImage", "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE"}],
              "widgets_values": ["photo.png", "image"]}]
    links = []
    for i in range(n):
        source = 1 if i == 0 else 100 + i - 1
        links.append([1000 + i, source, 0, 100 + i, 0, "IMAGE"])
        nodes.append({"id": 100 + i, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 1000 + i}],
                      "outputs": [{"name": "", "type": "IMAGE"}]})
    if loop:
        links[0] = [1000, 100 + n - 1, 0, 100, 0, "IMAGE"]
    links.append([5000, 100 + n - 1, 0, 2, 0, "IMAGE"])
    nodes.append({"id": 2, "type": "PreviewImage", "inputs": [{"name": "images", "type": "IMAGE", "link": 5000}],
                  "outputs": []})
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_long_reroute_chains_convert_and_reroute_loops_are_refused(object_info: dict[str, Any]) -> None:
    assert ui_to_api(_reroute_chain(3000), object_info)["2"]["inputs"]["images"] == ["1", 0]
    with pytest.raises(ConversionError, match="loop of reroutes"):
        ui_to_api(_reroute_chain(5, loop=True), object_info)


def _malformed_workflows() -> list[Any]:
    base = _reroute_chain(1)
    cases = []
    for mutate in (
        lambda w: w["links"].__setitem__(0, {"id": 1000, "origin_id": 1}),  # a link missing keys
        lambda w: w["nodes"][2].__setitem__("inputs", "images"),  # inputs as a string
        lambda w: w["nodes"][2]["inputs"][0].__setitem__("link", "abc"),  # a non-numeric link id
        lambda w: w["links"].__setitem__(1, ["x", 100, 0, 2, 0, "IMAGE"]),  # a non-numeric link id in links
        lambda w: w["nodes"][2]["inputs"][0].__setitem__("link", [1]),
        lambda w: w["links"].__setitem__(1, [5000, [1], 0, 2, 0, "IMAGE"]),
        lambda w: w.__setitem__("definitions", {"subgraphs": "x"}),
        lambda w: w.__setitem__("links", {"a": 1}),
        lambda w: w["nodes"][0].__setitem__("id", [1]),
    ):
        workflow = json.loads(json.dumps(base))
        mutate(workflow)
        cases.append(workflow)
    return cases


@pytest.mark.parametrize("index", range(9))
def test_malformed_editor_workflows_are_conversion_errors(object_info: dict[str, Any], index: int) -> None:
    with pytest.raises(ConversionError):
        ui_to_api(_malformed_workflows()[index], object_info)


def test_malformed_editor_workflows_and_reroute_chains_get_400_from_prompt(server) -> None:
    for workflow in [*_malformed_workflows(), _reroute_chain(5, loop=True)]:
        status, answer = http(server.url, "POST", "/prompt", json.dumps({"prompt": workflow}).encode())
        assert status == 400, (workflow, answer)
        assert json.loads(answer)["error"]["type"] == "invalid_prompt"
    status, answer = http(server.url, "POST", "/prompt", json.dumps({"prompt": _reroute_chain(400)}).encode())
    assert status == 200, answer


def _png(size: tuple[int, int] = (4, 4)) -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("query", ["/jobs?limit=99999999999999999999", "/jobs?offset=9223372036854775808",
                                   "/history?max_items=9223372036854775808", "/history?offset=9223372036854775808",
                                   "/api/jobs?limit=9223372036854775807"])
def test_paging_values_beyond_sqlite_integers_are_400(server, query) -> None:
    status, answer = http(server.url, "GET", query)
    assert status == 400 and "must be at most" in json.loads(answer)["error"]["message"], answer


@pytest.mark.parametrize("name", ["a\x00b.png", "a\x01b.png", "a\nb.png", "a\x7fb.png", "a\rb.png"])
def test_upload_names_with_control_bytes_are_400(server, base_dir, name) -> None:
    body, headers = _multipart(name, _png())
    status, answer = http(server.url, "POST", "/upload/image", body, headers=headers)
    assert status == 400, answer
    encoded = "".join(c if c.isalnum() or c == "." else f"%{ord(c):02X}" for c in name)
    body = (b'--B\r\nContent-Disposition: form-data; name="image"; filename*=UTF-8\'\'' + encoded.encode()
            + b"\r\nContent-Type: image/png\r\n\r\n" + _png() + b"\r\n--B--\r\n")
    status, answer = http(server.url, "POST", "/upload/image", body,
                          headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert status == 400, answer
    assert sorted(p.name for p in (base_dir / "input").iterdir()) == ["photo.png"]


def test_a_bearer_header_that_is_not_utf8_is_401(base_dir: Path) -> None:
    with ThreadedServer(options_for(base_dir, full=False, token="sekrit")) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        for value in (b"Bearer \xff\xfe", b"Basic \xc3\x28", b"Bearer sekrit\xff"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value
                             + b"\r\nConnection: close\r\n\r\n")
                assert sock.recv(100).split()[1] == b"401", value
        assert http(srv.url, "GET", "/queue", headers={"Authorization": "Bearer sekrit"})[0] == 200


# ---------------------------------------------------------------- 7. a full disk fails the prompt, never sticks it


class BulkyOutput(Node):
    """An output node whose result lists `count` files: its history record needs fresh database pages."""

    CATEGORY = "testing"
    OUTPUT_NODE = True

    images: ImageType
    count: int = Input(500, ge=1, le=100_000)

    def execute(self, ctx: RunContext) -> NodeOutput:
        return NodeOutput(ui={"images": [{"filename": f"bulky_{i:05}.png", "subfolder": "", "type": "temp"}
                                         for i in range(self.count)]})


def _fill_database(queue: Any) -> None:
    """Makes SQLite's own 'database or disk is full' (SQLITE_FULL) happen on the next write that needs space:
    the file may not grow past its current pages, and those pages are packed with filler rows."""
    with queue._lock:
        db = queue._db
        db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        db.execute("PRAGMA max_page_count = " + str(db.execute("PRAGMA page_count").fetchone()[0] + 2))
        for size in (4000, 1000, 200, 40, 8, 1):
            try:
                while True:
                    db.execute("INSERT INTO filler VALUES (?)", (b"f" * size,))
            except sqlite3.OperationalError as exc:
                assert "full" in str(exc)


def _free_database(queue: Any) -> None:
    with queue._lock:
        queue._db.execute("PRAGMA max_page_count = 1073741823")
        queue._db.execute("DELETE FROM filler")


def test_a_full_database_fails_the_prompt_frees_the_worker_and_recovers(base_dir: Path) -> None:
    import urllib.request

    from latentgraph.server.state import STATE
    options = options_for(base_dir, full=False)
    assert options.registry is not None
    options.registry.register(BulkyOutput)
    with ThreadedServer(options) as srv, contextlib.ExitStack() as stack:
        queue = srv.app[STATE].queue

        def get(path: str) -> Any:
            with urllib.request.urlopen(srv.url + path, timeout=10) as answer:
                return json.loads(answer.read())

        prompt = slow_prompt(steps=30, delay_ms=20)
        prompt["2"] = {"class_type": "BulkyOutput", "inputs": {"images": ["1", 0], "count": 500}}
        body = json.dumps({"prompt": prompt, "prompt_id": "full-1"}).encode()
        ws = stack.enter_context(srv.socket("full-db"))  # hears every prompt: they are queued without a client id
        assert http(srv.url, "POST", "/prompt", body)[0] == 200
        SlowImage.wait_for_step("full-1")
        _fill_database(queue)
        ws.receive_until(finished({"full-1"}), timeout=20)  # sent once the worker is free again
        assert not get("/queue")["queue_running"], "the prompt stayed running"
        job = get("/jobs/full-1")
        assert job["status"] == "failed" and "could not be stored" in job["execution_error"]["exception_message"]
        assert get("/history/full-1")["full-1"]["status"]["status_str"] == "error"
        assert get("/prompt")["exec_info"]["queue_remaining"] == 0
        padded = {"prompt": image_prompt(), "extra_data": {"note": "n" * 30_000}}  # needs pages the file cannot get
        status, answer = http(srv.url, "POST", "/prompt", json.dumps(padded).encode())
        assert status == 507 and json.loads(answer)["error"]["type"] == "insufficient_storage", answer

        _free_database(queue)  # space is back: the failure is recorded, and prompts run again
        status, answer = http(srv.url, "POST", "/prompt", json.dumps({"prompt": image_prompt(),
                                                                      "prompt_id": "after"}).encode())
        assert status == 200, answer
        ws.receive_until(finished({"after"}), timeout=20)  # sent once its record is in history
        assert get("/history/after")["after"]["status"]["status_str"] == "success"
        assert get("/history/full-1")["full-1"]["status"]["status_str"] == "error"
        with queue._lock:
            state = queue._db.execute("SELECT state FROM prompts WHERE prompt_id = 'full-1'").fetchone()[0]
        assert state == "done"


def test_save_image_leaves_no_truncated_png_when_the_write_fails(tmp_path: Path) -> None:
    """A real failed write (the file-size limit, EFBIG, standing in for ENOSPC): nothing is left under any name."""
    import resource
    import signal

    import torch
    from latentgraph.nodes.image_nodes import save_images
    images = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError):
            save_images(images, tmp_path, "full", "output", None, None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(tmp_path.iterdir()) == []
    saved = save_images(images, tmp_path, "full", "output", None, None)
    assert [p.name for p in tmp_path.iterdir()] == [saved[0]["filename"]] == ["full_00001_.png"]


# ------------------------------------------------------------- 3. nothing slow on the event loop for the first prompt


def test_the_first_prompt_after_start_neither_waits_nor_stalls_the_event_loop(tmp_path: Path) -> None:
    """A fresh interpreter with the real node registry, as `latentgraph serve` starts. Before the warm-up, the
    first txt2img prompt imported diffusers inside validation: 10 s to answer, the loop stalled ~0.8 s."""
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-m", "tests.server.first_prompt_probe", str(tmp_path),
                           str(root / "workflows" / "txt2img.json")], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "LATENTGRAPH_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print("first prompt:", figures)  # the benchmark figure: stall during the first prompt against the idle loop
    assert figures["status"] in (200, 400)
    assert figures["first_prompt_answer_ms"] < 1000, figures
    assert figures["first_prompt_max_stall_ms"] < max(100.0, 10 * figures["idle_max_stall_ms"]), figures


# ---------------------------------------------------------------- every body under 1 MB: answered in bounded CPU


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("hostile")
    (base / "input").mkdir()
    (base / "input" / "photo.png").write_bytes(_png((32, 16)))
    with ThreadedServer(options_for(base, full=False)) as running:
        yield running


def _queue_is_empty(server: ThreadedServer) -> bool:
    return not json.loads(http(server.url, "GET", "/prompt", pause_s=0)[1])["exec_info"]["queue_remaining"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(hostile.KINDS), size=st.one_of(st.integers(1, 1024 * 1024 - 1),
                                                            st.just(1024 * 1024 - 1)), seed=st.integers(0, 99))
def test_any_body_under_1mb_is_answered_within_1s_of_cpu(shared_server, kind: str, size: int, seed: int) -> None:
    """The whole process's CPU time (server, worker and this client) while one hostile request is answered."""
    path, data, headers = hostile.body(kind, size, seed)
    assert len(data) < 1024 * 1024

    def cpu_of_one_answer() -> float:
        # an accepted prompt from an earlier example runs first: its CPU is not ours (polled: it was queued before)
        wait_until(lambda: _queue_is_empty(shared_server), 60, "the earlier prompts to finish", interval=0.02)
        start = time.process_time()
        status, answer = http(shared_server.url, "POST", path, data, headers=headers, pause_s=0)
        assert status < 500, (kind, size, answer[:300])
        return time.process_time() - start

    # The process's CPU time also counts whatever else ran meanwhile (a garbage collection, the loop's other work;
    # a loaded CI run once read 1.23 s, then well under 1 s for the same body): a body that really costs a second
    # costs it every time, so a second answer is asked for before failing, and the lower figure counts.
    used = cpu_of_one_answer()
    if used >= 1.0:
        used = min(used, cpu_of_one_answer())
    assert used < 1.0, (kind, size, used)


@pytest.mark.parametrize("kind", ["cycle"])
def test_the_costliest_1mb_bodies_stay_under_100mb_of_memory(shared_server, kind: str) -> None:
    """Python memory allocated while the answer is made (tracemalloc peak), for the bodies that measured largest
    (all kinds: `python -m tests.server.hostile --memory`)."""
    import tracemalloc

    path, data, headers = hostile.body(kind, 1024 * 1024 - 1)
    wait_until(lambda: _queue_is_empty(shared_server), 60, "the earlier tests' prompts to finish", interval=0.02)
    tracemalloc.start()
    try:
        status, _ = http(shared_server.url, "POST", path, data, headers=headers, pause_s=0, timeout=120)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status < 500
    assert peak < 100 * 2**20, (kind, peak)


# ---------------------------------------------------------------- 10. history is paged and capped


def test_history_answers_at_most_a_page_and_pages_with_offset(base_dir: Path) -> None:
    from latentgraph.server.queue import PromptQueue
    from latentgraph.server.routes_queue import MAX_HISTORY_PAGE
    options = options_for(base_dir, full=False)
    queue = PromptQueue(options.database_path)  # filled before the server (and its worker) starts
    total = MAX_HISTORY_PAGE + 5
    for i in range(total):
        queue.add(f"h{i:05}", {"1": {"class_type": "X", "inputs": {}}}, {}, [])
        item = queue.claim_next()
        assert item is not None
        queue.finish(item.prompt_id, "success", True, [], {}, {}, None)
    queue.close()
    with ThreadedServer(options) as srv:
        for query in ("/history", f"/history?max_items={10 * total}"):
            page = json.loads(http(srv.url, "GET", query)[1])
            assert len(page) == MAX_HISTORY_PAGE and list(page)[-1] == f"h{total - 1:05}", query
            assert list(page)[0] == f"h{total - MAX_HISTORY_PAGE:05}"
        page = json.loads(http(srv.url, "GET", f"/history?max_items=3&offset={total - 2}")[1])
        assert list(page) == [f"h{total - 2:05}", f"h{total - 1:05}"]


# ---------------------------------------------------------------- 9. a damaged database is named, with a way back


def _history_database(path: Path, prompts: int) -> None:
    from latentgraph.server.queue import PromptQueue
    queue = PromptQueue(path)
    for i in range(prompts):
        queue.add(f"d{i:04}", {"1": {"class_type": "X", "inputs": {"pad": "p" * 200}}}, {}, [])
        item = queue.claim_next()
        assert item is not None
        queue.finish(item.prompt_id, "success", True, [], {"1": {"images": [{"filename": f"{i}.png"}]}}, {}, None)
    queue.close()


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 200)
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "index":
        db = sqlite3.connect(path)
        root, page_size = (db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'prompts_done_seq'")
                           .fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0])
        db.close()
        start = (root - 1) * page_size
        data[start + 8: start + page_size] = bytes(range(256)) * ((page_size - 8) // 256) + b"\0" * (
            (page_size - 8) % 256)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "index"])
def test_a_damaged_database_is_named_with_how_to_recover_and_the_backup_restores(tmp_path: Path, how: str) -> None:
    from latentgraph.server.queue import DatabaseCorrupt, PromptQueue
    path = tmp_path / "latentgraph.sqlite3"
    _history_database(path, 150)
    backup = tmp_path / "latentgraph.sqlite3.backup"
    assert backup.is_file()
    _damage(path, how)
    with pytest.raises(DatabaseCorrupt) as refused:
        PromptQueue(path)
    message = str(refused.value)
    assert str(path) in message and f"cp {backup} {path}" in message and "mv " in message
    path.write_bytes(backup.read_bytes())  # the recovery the message describes
    restored = PromptQueue(path)
    history = restored.history()
    assert len(history) >= 100 and "d0000" in history  # backups at start and every 100 finished prompts
    restored.close()


def test_serve_on_a_damaged_database_exits_1_naming_the_file_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "latentgraph.sqlite3").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "latentgraph.cli", "serve", "--base-dir", str(tmp_path),
                           "--port", "0"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert str(tmp_path / "latentgraph.sqlite3") in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- 5. pixel budget: refused before allocating


def _huge_png(width: int, height: int) -> bytes:
    """A real, valid grey PNG of width x height, streamed row by row: it decodes to width*height bytes but is
    tiny on disk (the shape of the 0.5 MB 13000x13000 PNG of the attack run)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


class LatentSink(Node):
    """An output that takes a latent, so that a workflow of EmptyLatentImage alone validates."""

    CATEGORY = "testing"
    OUTPUT_NODE = True

    samples: LatentType

    def execute(self, ctx: RunContext) -> NodeOutput:
        return NodeOutput(ui={})


def test_empty_latents_beyond_the_pixel_budget_fail_validation_naming_node_and_input() -> None:
    from latentgraph.nodes.sd.latent_nodes import EmptyLatentImage
    from latentgraph.nodes.sd.sd3_nodes import EmptySD3LatentImage
    registry = make_registry(full=False)
    for cls in (EmptyLatentImage, EmptySD3LatentImage, LatentSink):
        registry.register(cls)
    for latent in ("EmptyLatentImage", "EmptySD3LatentImage"):
        def prompt(width: int, height: int, batch: int, latent: str = latent) -> dict[str, Any]:
            return {"1": {"class_type": latent, "inputs": {"width": width, "height": height, "batch_size": batch}},
                    "2": {"class_type": "LatentSink", "inputs": {"samples": ["1", 0]}}}
        result = validate(prompt(16384, 16384, 1), registry, Environment(Path(".")))
        assert not result.ok
        error = result.node_errors["1"]["errors"][0]
        assert error["type"] == "custom_validation_failed" and error["extra_info"]["input_name"] == "width"
        assert "268,435,456 pixels" in error["message"] and "LATENTGRAPH_MAX_PIXELS" in error["message"]
        assert not validate(prompt(1024, 1024, 65), registry, Environment(Path("."))).ok
        assert validate(prompt(1024, 1024, 64), registry, Environment(Path("."))).ok
        assert validate(prompt(8192, 8192, 1), registry, Environment(Path("."))).ok


def test_a_small_png_that_decodes_huge_is_refused_by_load_image_and_view(server, base_dir: Path) -> None:
    data = _huge_png(13000, 13000)
    assert len(data) < 600_000
    (base_dir / "input" / "bomb.png").write_bytes(data)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "bomb.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    status, answer = http(server.url, "POST", "/prompt", json.dumps({"prompt": prompt}).encode())
    assert status == 400, answer
    error = json.loads(answer)["node_errors"]["1"]["errors"][0]
    assert error["extra_info"]["input_name"] == "image" and "169,000,000 pixels" in error["message"]
    for query in ("preview=webp;90", "preview=jpeg", "channel=a"):
        status, answer = http(server.url, "GET", f"/view?filename=bomb.png&type=input&{query}")
        assert status == 400 and b"169,000,000 pixels" in answer, (query, answer[:300])
    status, _ = http(server.url, "GET", "/view?filename=bomb.png&type=input")  # the file itself, as stored
    assert status == 200


def test_an_animation_with_too_many_pixels_over_its_frames_is_refused(base_dir: Path, monkeypatch) -> None:
    from latentgraph.nodes.image_nodes import decoded_size_problem
    from PIL import Image
    frames = [Image.new("L", (64, 64), i) for i in range(40)]
    path = base_dir / "input" / "long.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    monkeypatch.setenv("LATENTGRAPH_MAX_PIXELS", str(64 * 64 * 39))
    assert "40 x 64x64" in (decoded_size_problem(path) or "")
    monkeypatch.setenv("LATENTGRAPH_MAX_PIXELS", str(64 * 64 * 40))
    assert decoded_size_problem(path) is None


# ---------------------------------------------------------------- 10. a client id is bound to its socket


async def test_a_second_socket_cannot_take_over_a_connected_client_id(server) -> None:
    import aiohttp
    ws_url = server.url.replace("http", "ws") + "/ws?clientId=victim"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as owner_session, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as thief_session:  # IP cookies
        owner = await owner_session.ws_connect(ws_url)
        assert (await owner.receive_json(timeout=10))["data"]["sid"] == "victim"
        thief = await thief_session.ws_connect(ws_url)
        stolen = (await thief.receive_json(timeout=10))["data"]["sid"]
        assert stolen != "victim"
        body = json.dumps({"prompt": image_prompt(), "client_id": "victim"}).encode()
        status, answer = http(server.url, "POST", "/prompt", body)
        assert status == 200, answer
        prompt_id = json.loads(answer)["prompt_id"]
        seen = await receive_until(owner, finished({prompt_id}))
        assert any(m.get("type") == "executed" for m in seen if isinstance(m, dict))
        try:  # the other socket saw only the broadcasts (queue status), none of the prompt's events
            while (message := await thief.receive(timeout=0.5)).type.name == "TEXT":
                assert prompt_id not in message.data, message.data
        except asyncio.TimeoutError:
            pass
        await thief.close()
        # the owner's own browser (same cookie) reconnecting while the old socket looks open takes its id back
        again = await owner_session.ws_connect(ws_url)
        assert (await again.receive_json(timeout=10))["data"]["sid"] == "victim"
        await again.close()
        await owner.close()
        # once nobody holds it, the id is free for anyone (a client reconnecting from a new session)
        late = await thief_session.ws_connect(ws_url)
        assert (await late.receive_json(timeout=10))["data"]["sid"] == "victim"
        await late.close()


def test_a_full_disk_while_storing_user_files_or_uploads_is_507_and_leaves_nothing(server, base_dir: Path) -> None:
    """A real failed write (the file-size limit, EFBIG, the same errno class as ENOSPC) in the server's thread."""
    import io
    import resource
    import signal

    import numpy as np
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 60_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    try:
        status, answer = http(server.url, "POST", "/userdata/big.bin", b"u" * 60_000)
        assert status == 507 and json.loads(answer)["error"]["type"] == "insufficient_storage", answer
        body, headers = _multipart("big.png", buffer.getvalue())
        status, answer = http(server.url, "POST", "/upload/image", body, headers=headers)
        assert status == 507, answer
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    user = base_dir / "user" / "default"
    assert not (user / "big.bin").exists() and not [p for p in user.iterdir() if p.name.startswith(".tmp")]
    assert sorted(p.name for p in (base_dir / "input").iterdir()) == ["photo.png"]
    assert http(server.url, "POST", "/userdata/big.bin", b"u" * 60_000)[0] == 200  # space is back
