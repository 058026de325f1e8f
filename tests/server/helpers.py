"""What the server tests share: test-only nodes, cheap workflows, and a real server running in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import torch
from aiohttp import web
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.registry import Registry
from latentgraph.nodes import image_nodes, load_registry
from latentgraph.server.app import create_app
from latentgraph.server.options import ServerOptions
from PIL import Image


class SlowImage(Node):
    """Makes a small image in `steps` steps of `delay_ms` each, checking for interrupts and reporting progress at
    every step like a sampler; with `preview` set it also sends a preview image at every step."""

    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    DETERMINISTIC = False
    steps_done: ClassVar[list[tuple[str, int]]] = []
    stepped: ClassVar[threading.Condition] = threading.Condition()  # notified after each step is appended

    steps: int = Input(10, ge=1, le=10**6)
    delay_ms: int = Input(5, ge=0, le=10**4)
    preview: bool = Input(False)
    value: float = Input(0.5, ge=0.0, le=1.0)

    def execute(self, ctx: RunContext) -> tuple:
        for step in range(self.steps):
            ctx.check_interrupt()
            time.sleep(self.delay_ms / 1000)  # the simulated work of one step: what the tests interrupt or watch
            with SlowImage.stepped:
                SlowImage.steps_done.append((ctx.prompt_id, step + 1))
                SlowImage.stepped.notify_all()
            if self.preview:
                ctx.preview(Image.new("RGB", (64, 48), (step % 255, 80, 160)))
            ctx.progress(step + 1, self.steps)
        return (torch.full((1, 8, 8, 3), self.value),)

    @classmethod
    def wait_for_step(cls, prompt_id: str, timeout: float = 10.0) -> None:
        """Blocks until a SlowImage of `prompt_id` (running in this process's worker thread) has done a step, so a
        test acts while that prompt is surely running."""
        with cls.stepped:
            reached = cls.stepped.wait_for(lambda: any(p == prompt_id for p, _ in cls.steps_done), timeout)
        assert reached, f"prompt {prompt_id} did no SlowImage step within {timeout} s"


def make_registry(full: bool = True) -> Registry:
    """Every built-in node plus the test nodes; `full=False` takes only the image nodes (no diffusion imports),
    for server processes that must start fast."""
    if full:
        registry = load_registry(plugins=False)
    else:
        registry = Registry()
        for cls in (image_nodes.LoadImage, image_nodes.SaveImage, image_nodes.PreviewImage, image_nodes.ImageScale):
            registry.register(cls)
    registry.register(SlowImage)
    return registry


def write_input_image(base_dir: Path, name: str = "photo.png") -> Path:
    path = base_dir / "input" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 16), (0, 200, 0)).save(path)
    return path


def image_prompt(prefix: str = "test", width: int = 24) -> dict[str, Any]:
    """LoadImage -> ImageScale -> SaveImage: a real workflow that needs no model."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}, "_meta": {"title": "Load Image"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                     "width": width, "height": 0, "crop": "disabled"},
              "_meta": {"title": "Upscale Image"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix},
              "_meta": {"title": "Save Image"}},
    }


def slow_prompt(steps: int = 10, delay_ms: int = 5, prefix: str = "slow", preview: bool = False,
                value: float = 0.5) -> dict[str, Any]:
    return {
        "1": {"class_type": "SlowImage", "inputs": {"steps": steps, "delay_ms": delay_ms, "preview": preview,
                                                    "value": value}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def options_for(base_dir: Path, full: bool = True, **overrides: Any) -> ServerOptions:
    """Options for a test server; `full=False` also skips the node packages' environment hooks (fast start)."""
    if not full:
        overrides.setdefault("environment", Environment(base_dir))
    return ServerOptions(base_dir=base_dir, registry=make_registry(full), **overrides)


class ThreadedServer:
    """A real server on 127.0.0.1 with its own event loop in a thread, for synchronous clients (libraries that run
    their own asyncio loop, hypothesis tests)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.app = create_app(self.options)
            runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(60), "the test server did not start within 60 s"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def socket(self, client_id: str, headers: dict[str, str] | None = None) -> ThreadedSocket:
        """A WebSocket to this server for a synchronous test (open it before queueing what it should hear);
        `headers` carry a token where the server wants one."""
        return ThreadedSocket(self, client_id, headers)


class ThreadedSocket:
    """A WebSocket client driven on a ThreadedServer's own loop, so a synchronous test can wait on the server's
    events (`receive_until`) instead of polling its HTTP state."""

    def __init__(self, server: ThreadedServer, client_id: str, headers: dict[str, str] | None = None) -> None:
        self.server = server
        self.client_id = client_id
        self.headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def _call(self, coroutine: Any, timeout: float) -> Any:
        assert self.server._loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coroutine, self.server._loop).result(timeout)

    def __enter__(self) -> ThreadedSocket:
        async def connect() -> None:
            self._session = aiohttp.ClientSession()
            self._ws = await self._session.ws_connect(f"{self.server.url}/ws?clientId={self.client_id}",
                                                     headers=self.headers)

        self._call(connect(), 30)
        return self

    def receive_until(self, done: Any, timeout: float = 60.0) -> list[Any]:
        """`receive_until` on this socket, from the calling thread."""
        return self._call(receive_until(self._ws, done, timeout), timeout + 10)

    def __exit__(self, *exc: Any) -> None:
        async def close() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        self._call(close(), 30)


async def receive_until(ws: Any, done: Any, timeout: float = 60.0) -> list[Any]:
    """Collects messages (JSON as dicts, binary as bytes) until `done(messages)` is true."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while not done(messages):
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type.name == "TEXT":
            messages.append(msg.json())
        elif msg.type.name == "BINARY":
            messages.append(msg.data)
        else:
            raise AssertionError(f"websocket closed: {msg}")
    return messages


def finished(prompt_ids: set[str]) -> Any:
    """A `done` predicate: every prompt in `prompt_ids` sent its closing `executing {node: null}`."""
    def check(messages: list[Any]) -> bool:
        ended = {m["data"]["prompt_id"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
                 and m["data"]["node"] is None}
        return prompt_ids <= ended
    return check
