"""Hostile request bodies of a chosen size, for the bounded-cost property test and the worst-case measurement.

Each builder makes a body of at most `size` bytes that aims at one cost: validation (failing chains, wide fan-in,
unknown classes), the editor-format conversion (a subgraph bomb, long reroute chains, many nodes), the JSON parser
(deep nesting, many keys, long strings) or the upload path (bytes that are no image).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any


def _fit(make: Callable[[int], Any], size: int, lo: int = 1, hi: int = 200_000) -> bytes:
    """The largest body `make(n)` encodes to within `size` bytes (binary search on n)."""
    best = json.dumps(make(lo)).encode()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        body = json.dumps(make(mid)).encode()
        if len(body) <= size:
            lo, best = mid, body
        else:
            hi = mid - 1
    return best


def failing_chain(n: int) -> dict[str, Any]:
    return {"prompt": {str(i): {"class_type": "PreviewImage", "inputs": {"images": [str(i - 1), 0]}}
                       for i in range(1, n + 1)}}


def unknown_classes(n: int) -> dict[str, Any]:
    return {"prompt": {str(i): {"class_type": f"Nope{i}", "inputs": {"x": [str(i + 1), 0]}} for i in range(n)}}


def fan_in(n: int) -> dict[str, Any]:
    nodes = max(2, int(n ** 0.5))
    return {"prompt": {str(i): {"class_type": "PreviewImage",
                                "inputs": {f"i{j}": [str(j), 0] for j in range(i)} | {"images": [str(i - 1), 0]}}
                       for i in range(1, nodes + 1)}}


def cycle(n: int) -> dict[str, Any]:
    return {"prompt": {str(i): {"class_type": "ImageScale", "inputs": {
        "image": [str((i + 1) % n), 0], "upscale_method": "bilinear", "width": 8, "height": 8, "crop": "disabled"}}
        for i in range(n)} | {"out": {"class_type": "PreviewImage", "inputs": {"images": ["0", 0]}}}}


def subgraph_bomb(n: int) -> dict[str, Any]:
    copies = max(2, min(n, 64))
    levels = 32
    definitions = [{"id": f"s{k}", "links": [], "nodes": [
        {"id": i, "type": f"s{k + 1}" if k < levels - 1 else "PreviewImage", "inputs": [], "outputs": []}
        for i in range(copies)]} for k in range(levels)]
    return {"prompt": {"nodes": [{"id": 1, "type": "s0", "inputs": [], "outputs": []}] * max(1, n // 64),
                       "links": [], "definitions": {"subgraphs": definitions}}}


def reroutes(n: int) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": 1, "type": "LoadImage", "inputs": [],
                                    "outputs": [{"name": "IMAGE", "type": "IMAGE"}], "widgets_values": ["photo.png"]}]
    links = []
    for i in range(n):
        links.append([10 + i, 1 if i == 0 else 100000 + i - 1, 0, 100000 + i, 0, "IMAGE"])
        nodes.append({"id": 100000 + i, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 10 + i}],
                      "outputs": [{"name": "", "type": "IMAGE"}]})
    for j in range(min(n, 200)):  # many consumers, each walking the whole chain
        links.append([900000 + j, 100000 + n - 1, 0, 500000 + j, 0, "IMAGE"])
        nodes.append({"id": 500000 + j, "type": "PreviewImage",
                      "inputs": [{"name": "images", "type": "IMAGE", "link": 900000 + j}], "outputs": []})
    return {"prompt": {"nodes": nodes, "links": links}}


def ui_many_nodes(n: int) -> dict[str, Any]:
    return {"prompt": {"nodes": [{"id": i, "type": "PreviewImage", "inputs": [
        {"name": "images", "type": "IMAGE", "link": i}], "outputs": []} for i in range(n)],
        "links": [[i, i - 1, 0, i, 0, "IMAGE"] for i in range(n)]}}


def many_keys(n: int) -> dict[str, Any]:
    return {"prompt": {"1": {"class_type": "PreviewImage", "inputs": {f"k{i}": i for i in range(n)}}}}


def long_strings(n: int) -> dict[str, Any]:
    return {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x" * n}},
                       "2": {"class_type": "LoadImage", "inputs": {"image": "y" * n}}}}


PROMPT_BUILDERS: dict[str, Callable[[int], Any]] = {
    "failing_chain": failing_chain, "unknown_classes": unknown_classes, "fan_in": fan_in, "cycle": cycle,
    "subgraph_bomb": subgraph_bomb, "reroutes": reroutes, "ui_many_nodes": ui_many_nodes, "many_keys": many_keys,
    "long_strings": long_strings,
}
KINDS = [*PROMPT_BUILDERS, "deep_nesting", "random_bytes", "settings_keys", "upload_noise"]


def body(kind: str, size: int, seed: int = 0) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for one hostile request of at most `size` bytes."""
    if kind in PROMPT_BUILDERS:
        return "/prompt", _fit(PROMPT_BUILDERS[kind], size), {}
    if kind == "deep_nesting":
        depth = max(1, (size - 20) // 13)
        return "/prompt", (b'{"prompt": ' + b'{"a": ['[:7] * depth + b"1" + b"]}" * depth + b"}")[:size], {}
    if kind == "random_bytes":
        return "/prompt", random.Random(seed).randbytes(size), {}
    if kind == "settings_keys":
        return "/settings", _fit(lambda n: {f"Comfy.K{i}": [i] for i in range(n)}, size), {}
    if kind == "upload_noise":
        boundary = "hostileBOUNDARY"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        data = b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(max(0, size - len(head) - len(tail) - 8))
        return "/upload/image", head + data + tail, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    raise ValueError(kind)


def measure(size: int = 1024 * 1024 - 1, trace: bool = False) -> list[dict[str, Any]]:
    """Each kind at `size` bytes against a real server in this process: status, CPU seconds of the whole process
    (server and client) and the peak of Python memory allocated while it was answered (tracemalloc)."""
    import tempfile
    import time
    import tracemalloc
    from pathlib import Path

    from tests.server.helpers import ThreadedServer, options_for, write_input_image
    from tests.server.test_hardening import http

    base = Path(tempfile.mkdtemp())
    write_input_image(base)
    rows = []
    with ThreadedServer(options_for(base, full=False)) as server:
        server.app  # noqa: B018 (started)
        for kind in KINDS:
            path, data, headers = body(kind, size)
            if trace:
                tracemalloc.start()
            cpu = time.process_time()
            wall = time.perf_counter()
            try:
                status, _ = http(server.url, "POST", path, data, headers=headers, pause_s=0, timeout=60)
            except TimeoutError:
                status = -1
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
            tracemalloc.stop()
            print(kind, status, round(cpu, 3), flush=True)
            rows.append({"kind": kind, "bytes": len(data), "status": status, "cpu_s": round(cpu, 3),
                         "wall_s": round(wall, 3), "peak_mb": round(peak / 2**20, 1)})
    return rows


if __name__ == "__main__":
    import sys
    for row in measure(1024 * 1024 - 1, trace="--memory" in sys.argv):
        print(json.dumps(row), flush=True)
