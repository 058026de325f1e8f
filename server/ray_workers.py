"""The execution worker as a Ray actor: one per GPU, or a configured number of CPU workers with T threads each.

Each actor holds its own registry, environment, executor, in-memory cache (tiered onto the shared cache, see
server/shared_cache.py) and model manager; model weights never leave it. `run` is a streaming generator: it
yields the engine's events as they happen (previews already shrunk and rate-limited here, so that only what the
client sees crosses the wire) and ends with one `("result", ...)` or `("raised", ...)` item. A stream that ends
without one means the actor died; the dispatcher (server/dispatch.py) reads it that way.

`interrupt` and `state` run while `run` is busy (the actor is threaded), so /interrupt reaches the running prompt.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from latentgraph.engine.executor import DEFAULT_CACHE_BYTES, Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.registry import Registry
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.memory_probe import install_memory_probe
from latentgraph.nodes.workflow_nodes import register_workflow_nodes
from latentgraph.server.shared_cache import SHARED_DIR, DiskTier, TieredCache, portable_keys, shared_index
from latentgraph.server.worker import WORKFLOWS_DIR
from latentgraph.server.worker_state import held_state
from PIL import Image

log = logging.getLogger(__name__)
ACTOR_CONCURRENCY = 4  # run, interrupt, state and free may overlap


@dataclass
class WorkerConfig:
    """What a worker actor is built from; sent to the actor, so every field pickles (a registry pickles its node
    classes by reference: they must be importable on the cluster's machines)."""

    base_dir: str
    threads: int = 1
    cache_bytes: int = DEFAULT_CACHE_BYTES
    registry: Registry | None = None  # None: the built-in nodes and installed plugins
    preview_interval_s: float = 0.1
    preview_max_size: int = 512
    shared_bytes: int = 2 * 1024**3  # each shared tier's budget; 0 turns the shared tier off
    shared_entry_bytes: int = 256 * 1024**2  # larger results stay on their worker


class ExecutionWorker:
    """One worker's executor, cache and models, living in a Ray actor process."""

    def __init__(self, config: WorkerConfig) -> None:
        torch.set_num_threads(max(1, config.threads))
        self.config = config
        registry = config.registry if config.registry is not None else load_registry()
        env = make_environment(Path(config.base_dir))
        install_memory_probe(env)
        disk = index = None
        if config.shared_bytes > 0:
            disk = DiskTier(Path(config.base_dir) / SHARED_DIR, config.shared_bytes)
            index = shared_index(config.shared_bytes)
        self.executor = Executor(registry, env, cache_bytes=config.cache_bytes)
        self.cache = TieredCache(config.cache_bytes, disk, index, config.shared_entry_bytes)
        self.executor.cache = self.cache
        register_workflow_nodes(registry, env)
        self._tokens: dict[str, InterruptToken] = {}
        self._run_lock = threading.Lock()  # one prompt at a time; `free` waits for it
        self.current: str | None = None
        self.prompts_done = 0
        self._warmed = threading.Event()  # runs wait for it: diffusers' lazy imports fail when two threads race
        threading.Thread(target=self._warm_up, name="latentgraph-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """The in-process worker's warm-up (server/worker.py), in the background of each fresh actor: validating
        the shipped workflows imports what node checks import lazily (diffusers' schedulers, ~10 s). Left to the
        first prompt, it made a fresh or restarted worker so slow that the dispatcher gave its checkpoint's queue
        to the other worker, which then loaded a second copy."""
        try:
            self.executor.registry.object_info(self.executor.env)
            for path in sorted(WORKFLOWS_DIR.glob("*.json")) if WORKFLOWS_DIR.is_dir() else []:
                try:
                    prompt = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(prompt, dict) and "nodes" not in prompt:
                        self.executor.validate(prompt)
                except Exception as exc:  # a warm-up failure is no worker failure: the first prompt does the work
                    log.debug("warm-up validation of %s failed: %r", path.name, exc)
        except Exception as exc:
            log.warning("warm-up failed: %r", exc)
        finally:
            self._warmed.set()

    def pid(self) -> int:
        return os.getpid()

    def state(self) -> dict[str, Any]:
        """Models loaded, cache size and keys, the running prompt (see server/worker_state.py)."""
        return {**held_state(self.executor), "keys": list(self.cache.keys_held()), "pid": os.getpid(),
                "current_prompt": self.current, "prompts_done": self.prompts_done, "threads": torch.get_num_threads(),
                "shared": dict(self.cache.shared)}

    def interrupt(self, prompt_id: str) -> bool:
        token = self._tokens.get(prompt_id)
        if token is None:
            return False
        token.set()
        return True

    def free(self, cache: bool, models: bool) -> dict[str, Any]:
        """Frees after the running prompt; the state afterwards, so that /workers and routing see it."""
        with self._run_lock:
            self.executor.free(cache=cache, models=models)
            return self.state()

    def run(self, prompt: dict[str, Any], prompt_id: str, outputs: list[str] | None,
            extra_data: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        """Runs one prompt, yielding `("event", name, data)` items, then `("result", summary)`, or `("raised",
        exception)` when the engine raised instead of reporting (an invalid prompt)."""
        events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        token = InterruptToken()
        last_preview = [0.0]

        def sink(event: str, data: dict[str, Any]) -> None:
            if event == "preview":
                data = self._preview(data, last_preview)
                if data is None:
                    return
            events.put(("event", event, data))

        def work() -> None:
            self._warmed.wait()
            try:
                self.cache.bind(portable_keys(self.executor, prompt, outputs))
                result = self.executor.run(prompt, prompt_id=prompt_id, outputs=outputs, sink=sink,
                                           interrupt=token, extra_data=extra_data)
                self.prompts_done += 1
                events.put(("result", {"status": result.status, "outputs": result.outputs,
                                       "executed": result.executed, "cached": result.cached,
                                       "error": result.error, "messages": result.messages,
                                       "device": result.device, "nodes": result.nodes, "state": self.state()}))
            except Exception as exc:
                events.put(("raised", _portable_exception(exc)))
            finally:
                self.cache.bind({})

        with self._run_lock:
            self._tokens[prompt_id] = token
            self.current = prompt_id
            thread = threading.Thread(target=work, name=f"latentgraph-run-{prompt_id[:8]}", daemon=True)
            thread.start()
            try:
                while True:
                    item = events.get()
                    yield item
                    if item[0] != "event":
                        break
            finally:
                thread.join()
                self._tokens.pop(prompt_id, None)
                self.current = None

    def _preview(self, data: dict[str, Any], last: list[float]) -> dict[str, Any] | None:
        """Previews at most every `preview_interval_s`, shrunk here: full-size frames never cross the wire."""
        image = data.get("image")
        if data.get("output"):  # SaveImageWebsocket's image: the client asked for it whole
            return data
        now = time.monotonic()
        if not isinstance(image, Image.Image) or now - last[0] < self.config.preview_interval_s:
            return None
        last[0] = now
        image = image.convert("RGB")
        image.thumbnail((self.config.preview_max_size, self.config.preview_max_size))
        return {**data, "image": image}


def _portable_exception(exc: Exception) -> Exception:
    """The exception itself when it survives pickling (InvalidPrompt keeps its report), else a RuntimeError with
    its message and traceback."""
    try:
        ray.cloudpickle.loads(ray.cloudpickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")


def worker_actor(config: WorkerConfig, *, gpu: bool, name: str | None = None) -> Any:
    """A restartable ExecutionWorker actor: a GPU each, or `config.threads` CPUs each on a CPU-only cluster."""
    resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": max(1, config.threads)}
    return ray.remote(ExecutionWorker).options(max_restarts=-1, max_task_retries=0,
                                               max_concurrency=ACTOR_CONCURRENCY, name=name,
                                               **resources).remote(config)
