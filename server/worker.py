"""The execution thread: takes prompts from the queue one at a time and runs them, off the event loop.

The engine's events become WebSocket messages for the prompt's client. The closing `executing {node: null}` is
held back until the result is in history and the queue status has gone out, as ComfyUI does, so that a client
that fetches /history on that message always finds its outputs there.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.server.queue import PromptQueue, QueueItem, StorageError, now_ms
from latentgraph.server.ws import Hub
from PIL import Image

log = logging.getLogger(__name__)

HISTORY_EVENTS = ("execution_start", "execution_cached", "execution_success", "execution_error",
                  "execution_interrupted")
IDLE_POLL_S = 1.0
WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
STORAGE_RETRY_S = 2.0


class RunLost(RuntimeError):
    """The process running a prompt died or hung (a Ray worker, see server/dispatch.py). With `retry` set the
    prompt is left running in the queue for the dispatcher to run once more elsewhere; without it, the prompt is
    failed in history with this message as the reason."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


@dataclass
class Running:
    item: QueueItem
    token: InterruptToken = field(default_factory=InterruptToken)
    node: str | None = None
    progress: dict[str, Any] | None = None
    last_preview: float = 0.0


class Worker:
    """One thread, one prompt at a time; `interrupt`, `request_free` and `stop` may be called from any thread."""

    def __init__(self, executor: Executor, queue: PromptQueue, hub: Hub, on_queue_change: Callable[[], None], *,
                 preview_interval_s: float = 0.1, preview_max_size: int = 512, warm_up: bool = True) -> None:
        self.executor = executor
        self.queue = queue
        self.hub = hub
        self.on_queue_change = on_queue_change
        self.preview_interval_s = preview_interval_s
        self.preview_max_size = preview_max_size
        self.current: Running | None = None
        self._free: tuple[bool, bool] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.warm_up = warm_up
        self.warmed = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latentgraph-worker", daemon=True)
        self._thread.start()
        self.start_warm_up()

    def start_warm_up(self) -> None:
        """Warms the executor up in the background (`warmed` is set when done), without starting the loop: the
        Ray dispatcher validates with this executor and runs prompts elsewhere."""
        if self.warm_up:
            threading.Thread(target=self._warm_up, name="latentgraph-warm-up", daemon=True).start()
        else:
            self.warmed.set()

    def _warm_up(self) -> None:
        """First-time work, done right after start-up instead of inside the first request: the node list (model
        folder scans) and a validation of every shipped workflow, which imports what node checks import lazily
        (diffusers' schedulers: ~10 s). In a request, that stalled every client for seconds."""
        started = time.monotonic()
        try:
            self.executor.registry.object_info(self.executor.env)
            for path in sorted(WORKFLOWS_DIR.glob("*.json")) if WORKFLOWS_DIR.is_dir() else []:
                if self._stopping.is_set():
                    break
                try:
                    prompt = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(prompt, dict) and "nodes" not in prompt:
                        self.executor.validate(prompt)
                except Exception as exc:  # a warm-up failure is no server failure
                    log.debug("warm-up validation of %s failed: %r", path.name, exc)
        except Exception:
            log.exception("warm-up failed; the first request will do its work instead")
        finally:
            log.info("warm-up done in %.1f s", time.monotonic() - started)
            self.warmed.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops after the current prompt, which is interrupted (and recorded as such)."""
        self._stopping.set()
        self.interrupt()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupts the running prompt (only if it is `prompt_id`, when given); False when nothing matched."""
        with self._lock:
            running = self.current
            if running is None or (prompt_id is not None and running.item.prompt_id != prompt_id):
                return False
            running.token.set()
            return True

    def request_free(self, cache: bool, models: bool) -> None:
        """Frees memory between prompts, never under a running one."""
        with self._lock:
            old = self._free or (False, False)
            self._free = (old[0] or cache, old[1] or models)
        self.queue.wake()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._apply_free()
                if not self.queue.flush_unrecorded():  # the disk is still full: nothing new can be recorded
                    self._stopping.wait(STORAGE_RETRY_S)
                    continue
                item = self.queue.claim_next()
                if item is None:
                    self.queue.wait(IDLE_POLL_S)
                    continue
                self._run(item)
            except StorageError as exc:
                log.error("the queue database cannot be written: %s; retrying in %s s", exc, STORAGE_RETRY_S)
                self._stopping.wait(STORAGE_RETRY_S)
            except Exception:  # the worker must outlive anything a prompt or the disk does to it
                log.exception("the worker hit an unexpected error; it goes on with the next prompt")
                time.sleep(0.1)

    def _apply_free(self) -> None:
        with self._lock:
            request, self._free = self._free, None
        if request is not None and any(request):
            self.executor.free(cache=request[0], models=request[1])

    def _run(self, item: QueueItem) -> None:
        running = Running(item)
        with self._lock:
            self.current = running
        sid = item.client_id
        self.on_queue_change()

        def sink(event: str, data: dict[str, Any]) -> None:
            if event == "preview":
                self._preview(running, data)
                return
            if event == "executing":
                running.node = data.get("node")
                if running.node is None:
                    return  # sent once the result is in history, below
            elif event == "progress":
                running.progress = data
            self.hub.post(event, data, sid)

        outputs: dict[str, Any] = {}
        error: dict[str, Any] | None = None
        try:
            result = self.executor.run(item.prompt, prompt_id=item.prompt_id, outputs=item.outputs or None,
                                       sink=sink, interrupt=running.token, extra_data=item.extra_data)
            status_str = "success" if result.status == "success" else "error"
            messages = [m for m in result.messages if m[0] in HISTORY_EVENTS]
            outputs, error = result.outputs, result.error
        except Exception as exc:  # invalid by now (a file gone since queueing), or an engine fault
            if isinstance(exc, RunLost) and exc.retry:  # nothing is recorded: the dispatcher runs it again
                with self._lock:
                    self.current = None
                raise
            error = {
                "prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": exc.validation.summary() if isinstance(exc, InvalidPrompt) else str(exc),
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": {},
                "timestamp": now_ms(),
            }
            status_str = "error"
            messages = [["execution_start", {"prompt_id": item.prompt_id, "timestamp": error["timestamp"]}],
                        ["execution_error", error]]
            self.hub.post("execution_start", messages[0][1], sid)
            self.hub.post("execution_error", error, sid)
        meta = {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                for node in outputs}
        try:
            self.queue.finish(item.prompt_id, status_str, status_str == "success", messages, outputs, meta, error)
        except StorageError:  # failed in memory with the reason; tell the client, free the worker
            log.error("the result of prompt %s could not be stored", item.prompt_id)
            failed = self.queue.unrecorded_error(item.prompt_id)
            if failed is not None:
                self.hub.post("execution_error", failed, sid)
        finally:
            with self._lock:
                self.current = None
        self.on_queue_change()
        self.hub.post("executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id}, sid)

    def _preview(self, running: Running, data: dict[str, Any]) -> None:
        """Rate-limited, and encoded here in the worker thread so the event loop never spends time on it; an output
        image (SaveImageWebsocket) goes out whole, as a PNG."""
        sid = running.item.client_id
        image = data.get("image")
        if data.get("output") and isinstance(image, Image.Image):  # SaveImageWebsocket: whole, as a PNG
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
            self.hub.post_image(buffer.getvalue(), sid)
            return
        now = time.monotonic()
        if now - running.last_preview < self.preview_interval_s or not self.hub.wants_previews(sid):
            return
        if not isinstance(image, Image.Image):
            return
        running.last_preview = now
        image = image.convert("RGB")
        image.thumbnail((self.preview_max_size, self.preview_max_size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        node = data.get("node")
        metadata = {"node_id": node, "prompt_id": running.item.prompt_id, "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}
        self.hub.post_preview(buffer.getvalue(), metadata, sid)
