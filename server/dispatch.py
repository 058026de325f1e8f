"""Running the queue on Ray workers: the dispatcher that stands where the single worker thread stands otherwise.

The server stays the front door: HTTP and WebSocket, the SQLite queue and history are unchanged and remain the
truth. The dispatcher looks ahead at the first pending prompts and gives each idle worker the one it is best
placed for: a prompt goes to a worker that already holds its model files, and among the rest to the idle worker
holding the most of its cache keys (computed by the front executor before anything runs); a prompt whose models
are held by a busy worker waits for it, unless more than `steal_backlog` such prompts are waiting, when an idle
worker takes it and loads the models too. A prompt whose models nobody holds goes to the idle worker holding the
fewest models (the least loaded).

Each worker slot runs its prompts through the same code as the single-process worker (`Worker._run` in
server/worker.py): the events the actor streams back are fed to that code's sink, so the client that queued the
prompt, and only that client, receives them in the engine's order, and the result is written to history the
same way. The executor it calls is `RemoteExecutor`, which forwards an interrupt to the actor and watches for
its death (the stream ends without a result, or Ray reports the actor gone) and for a hang (no event for
`hang_timeout_s`: the actor is killed). Either way the actor restarts (`max_restarts=-1`) and the prompt is run
once more, on another worker when there is one; if it is lost again it is failed in history with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from latentgraph.engine.executor import Executor, RunResult
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.server.options import RayOptions
from latentgraph.server.queue import PromptQueue, QueueItem, StorageError
from latentgraph.server.ray_workers import WorkerConfig, worker_actor
from latentgraph.server.worker import IDLE_POLL_S, STORAGE_RETRY_S, RunLost, Running, Worker
from latentgraph.server.worker_state import model_files
from latentgraph.server.ws import Hub

log = logging.getLogger(__name__)
LOOKAHEAD = 32  # pending prompts the dispatcher considers at once
POLL_S = 0.05  # how often a running prompt's stream is checked for an interrupt to forward
RESTART_WAIT_S = 120.0


@dataclass
class Slot:
    """One Ray worker as the dispatcher sees it: its actor and what it is believed to hold."""

    index: int
    actor: Any
    worker: Worker  # the server-side half: events to clients, the result into history
    ready: bool = False
    item: QueueItem | None = None
    pid: int | None = None
    restarts: int = 0
    files: set[str] = field(default_factory=set)  # model files loaded, or about to be by its assigned prompt
    keys: set[str] = field(default_factory=set)  # engine cache keys in its memory
    state: dict[str, Any] = field(default_factory=dict)  # its last own report (models, cache bytes, ...)
    backlog: int = 0  # pending prompts in the look-ahead whose models it holds
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class RemoteExecutor:
    """`Executor.run` for `Worker._run`, executed by a slot's actor: events go to the sink as they arrive."""

    def __init__(self, dispatcher: RayDispatcher, slot_index: int) -> None:
        self.dispatcher = dispatcher
        self.slot_index = slot_index

    def run(self, prompt: Any, *, prompt_id: str | None = None, outputs: list[str] | None = None,
            sink: Callable[[str, dict[str, Any]], None] | None = None, interrupt: InterruptToken | None = None,
            extra_data: dict[str, Any] | None = None) -> RunResult:
        dispatcher = self.dispatcher
        slot = dispatcher.slots[self.slot_index]
        assert prompt_id is not None, "queued prompts have ids"
        stream = slot.actor.run.remote(prompt, prompt_id, outputs, extra_data or {})
        last_sign = time.monotonic()
        forwarded = False
        while True:
            if interrupt is not None and interrupt.is_set() and not forwarded:
                slot.actor.interrupt.remote(prompt_id)
                forwarded = True
            ready, _ = ray.wait([stream], timeout=POLL_S)
            if not ready:
                if time.monotonic() - last_sign > dispatcher.options.hang_timeout_s:
                    ray.kill(slot.actor, no_restart=False)
                    raise dispatcher.lost(prompt_id, slot, f"it sent nothing for {dispatcher.options.hang_timeout_s:g}"
                                                           " s (hung) and was restarted")
                continue
            try:
                message = ray.get(next(stream))
            except StopIteration:
                raise dispatcher.lost(prompt_id, slot, "its process died (killed or out of memory)") from None
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.ObjectLostError) as exc:
                raise dispatcher.lost(prompt_id, slot, f"Ray reported it gone: {type(exc).__name__}") from exc
            last_sign = time.monotonic()
            if message[0] == "event":
                if sink is not None:
                    sink(message[1], message[2])
            elif message[0] == "raised":
                raise message[1]
            else:
                summary = message[1]
                result = RunResult(status=summary["status"], outputs=summary["outputs"], executed=summary["executed"],
                                   cached=summary["cached"], error=summary["error"], messages=summary["messages"],
                                   device=summary["device"], _nodes=summary["nodes"])
                dispatcher.observe(slot, summary["state"])
                for listener in dispatcher.front.executor.listeners:
                    try:
                        listener(result, prompt_id)
                    except Exception:
                        log.exception("a run listener failed for prompt %s", prompt_id)
                return result


class RayDispatcher:
    """Stands in for `Worker` (start, stop, interrupt, request_free, current, warmed) with Ray workers behind."""

    def __init__(self, executor: Executor, queue: PromptQueue, hub: Hub, on_queue_change: Callable[[], None],
                 options: RayOptions, config: WorkerConfig, *, preview_interval_s: float = 0.1,
                 preview_max_size: int = 512, warm_up: bool = True) -> None:
        self.queue = queue
        self.hub = hub
        self.options = options
        self.config = config
        self.on_queue_change = on_queue_change
        self.preview = (preview_interval_s, preview_max_size)
        # validates and plans (cache keys for routing) on the server; never runs a prompt
        self.front = Worker(executor, queue, hub, on_queue_change, warm_up=warm_up)
        self.warmed = self.front.warmed
        self.slots: list[Slot] = []
        self.started_cluster = False
        self.ready = threading.Event()
        self.boot_error: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._retries: list[QueueItem] = []
        self._retried: dict[str, int] = {}  # prompt id -> the slot it was lost on
        self._needs: dict[str, tuple[set[str], set[str]]] = {}
        self._thread: threading.Thread | None = None

    # -- the Worker interface ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.front.start_warm_up()
        self._thread = threading.Thread(target=self._main, name="latentgraph-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.interrupt()
        self.queue.wake()
        for slot in self.slots:
            slot.wake.set()
        for thread in [self._thread, *(slot.thread for slot in self.slots)]:
            if thread is not None:
                thread.join(timeout)
        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception as exc:  # the cluster may be gone already
                log.debug("worker %d could not be stopped: %r", slot.index, exc)
        if self.started_cluster:
            ray.shutdown()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupts the running prompt `prompt_id`, or every running prompt when None."""
        hit = False
        for slot in self.slots:
            hit = slot.worker.interrupt(prompt_id) or hit
        return hit

    def request_free(self, cache: bool, models: bool) -> None:
        """Each worker frees after its running prompt; the routing view forgets what they held at once, and takes
        each worker's report once it has freed (unless a prompt is already running there: its end reports)."""
        for slot in self.slots:
            if slot.ready:
                freed = slot.actor.free.remote(cache, models)
                if models:
                    slot.files.clear()
                if cache:
                    slot.keys.clear()
                threading.Thread(target=self._observe_free, args=(slot, freed), daemon=True,
                                 name=f"latentgraph-ray-free-{slot.index}").start()

    def _observe_free(self, slot: Slot, freed: Any) -> None:
        try:
            state = ray.get(freed, timeout=RESTART_WAIT_S)
        except Exception as exc:  # lost meanwhile: its restart reports afresh
            log.debug("worker %d did not report after freeing: %r", slot.index, exc)
            return
        if slot.item is None:
            self.observe(slot, state)

    @property
    def current(self) -> Running | None:
        """A running prompt (the most advanced slot's), for routes that show one."""
        for slot in self.slots:
            running = slot.worker.current
            if running is not None:
                return running
        return None

    def states(self) -> list[dict[str, Any]]:
        """Per worker: alive, pid, restarts, running prompt and its progress, models, cache, affinity backlog."""
        out = []
        for slot in self.slots:
            running = slot.worker.current
            out.append({
                "id": slot.index, "alive": slot.ready, "pid": slot.pid, "restarts": slot.restarts,
                "current_prompt": slot.item.prompt_id if slot.item is not None else None,
                "progress": running.progress if running is not None else None,
                "queue": slot.backlog, "models": sorted(slot.state.get("models", [])),
                "cache_bytes": slot.state.get("cache_bytes", 0), "cache_entries": slot.state.get("cache_entries", 0),
                "prompts_done": slot.state.get("prompts_done", 0), "threads": slot.state.get("threads"),
                "shared": slot.state.get("shared", {}),
            })
        return out

    # -- start-up ------------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        """Joins the cluster named by `--ray`, or starts a local one sized for the workers."""
        if ray.is_initialized():
            return
        if self.options.address:
            ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False)
        else:
            workers = self.options.workers or 1
            ray.init(num_cpus=workers * max(1, self.options.threads_per_worker), include_dashboard=False,
                     log_to_driver=False)
            self.started_cluster = True

    def _boot(self) -> None:
        self._connect()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        gpu = gpus > 0 and self.options.workers is None
        count = gpus if gpu else (self.options.workers or 1)
        for index in range(count):
            worker = Worker(RemoteExecutor(self, index), self.queue, self.hub,  # type: ignore[arg-type]
                            self.on_queue_change, preview_interval_s=self.preview[0],
                            preview_max_size=self.preview[1], warm_up=False)
            self.slots.append(Slot(index, worker_actor(self.config, gpu=gpu), worker))
        for slot in self.slots:
            self._await_ready(slot)
            slot.thread = threading.Thread(target=self._serve_slot, args=(slot,), daemon=True,
                                           name=f"latentgraph-ray-worker-{slot.index}")
            slot.thread.start()
        log.info("%d Ray worker(s) ready (%s)", count, "one GPU each" if gpu else
                 f"{self.options.threads_per_worker} thread(s) each")
        self.ready.set()

    def _await_ready(self, slot: Slot) -> None:
        """Waits for the actor's (re)start: its constructor loads the node library."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while not self._stopping.is_set():
            try:
                pid = ray.get(slot.actor.pid.remote(), timeout=10)
                state = ray.get(slot.actor.state.remote(), timeout=10)
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray worker {slot.index} did not start: {exc!r}") from exc
                time.sleep(0.2)
                continue
            if slot.pid is not None and pid != slot.pid:
                slot.restarts += 1
            slot.pid = pid
            self.observe(slot, state)
            slot.ready = True
            return

    # -- dispatching ---------------------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._boot()
        except Exception as exc:
            self.boot_error = f"{type(exc).__name__}: {exc}"
            log.exception("the Ray workers could not be started; queued prompts wait")
            return
        while not self._stopping.is_set():
            try:
                if not self.queue.flush_unrecorded():
                    self._stopping.wait(STORAGE_RETRY_S)
                    continue
                if not self._dispatch():
                    self.queue.wait(IDLE_POLL_S)
            except StorageError as exc:
                log.error("the queue database cannot be written: %s; retrying in %s s", exc, STORAGE_RETRY_S)
                self._stopping.wait(STORAGE_RETRY_S)
            except Exception:
                log.exception("the dispatcher hit an unexpected error; it goes on")
                time.sleep(0.1)

    def needs(self, item: QueueItem) -> tuple[set[str], set[str]]:
        """The model files a prompt names and its nodes' cache keys (volatile nodes left out), as the front
        executor computes them; an invalid prompt has no keys (its run fails anywhere)."""
        found = self._needs.get(item.prompt_id)
        if found is None:
            executor = self.front.executor
            files = model_files(executor.env, item.prompt)
            keys: set[str] = set()
            try:
                validation = executor.validate(item.prompt, item.outputs or None)
                if validation.ok:
                    plan = executor.plan(validation)
                    keys = {key for node, key in plan.keys.items() if node not in plan.volatile}
            except Exception as exc:  # planning is advice: a prompt that cannot be planned still runs
                log.debug("prompt %s could not be planned for routing: %r", item.prompt_id, exc)
            found = self._needs[item.prompt_id] = (files, keys)
        return found

    def choose(self, window: list[QueueItem], idle: list[Slot]) -> list[tuple[QueueItem, Slot]]:
        """Pairs of (prompt, idle worker), in the order they should start (see the module's docstring)."""
        live = [slot for slot in self.slots if slot.ready]
        idle = list(idle)
        chosen: list[tuple[QueueItem, Slot]] = []
        backlog: dict[int, int] = {}
        for item in window:
            if not idle:
                break
            files, keys = self.needs(item)
            lost_on = self._retried.get(item.prompt_id)
            candidates = [s for s in idle if s.index != lost_on] or (idle if len(live) <= 1 else [])
            if not candidates:
                continue
            held = {slot.index: len(files & slot.files) for slot in live}
            most = max(held.values(), default=0)
            holders = [slot for slot in live if most and held[slot.index] == most]
            def by_keys(slot: Slot, keys: set[str] = keys) -> tuple[int, int, int]:
                return len(keys & slot.keys), -len(slot.files), -slot.index

            idle_holders = [slot for slot in holders if slot in candidates]
            if idle_holders:
                target = max(idle_holders, key=by_keys)
            elif holders:
                first = holders[0].index
                backlog[first] = backlog.get(first, 0) + 1
                if backlog[first] <= self.options.steal_backlog:
                    continue  # its worker will be free soon enough; no second copy of its models
                target = max(candidates, key=by_keys)
                log.info("worker %d takes prompt %s and loads its models too: %d prompts wait for worker %d",
                         target.index, item.prompt_id, backlog[first], first)
            else:
                target = max(candidates, key=by_keys)
            chosen.append((item, target))
            idle.remove(target)
            target.files |= files  # it is about to load them: the next choice knows
        for slot in self.slots:
            slot.backlog = backlog.get(slot.index, 0)
        return chosen

    def _dispatch(self) -> bool:
        """Starts what can start now; False when nothing could (the caller waits for a change)."""
        pending = self.queue.peek_pending(LOOKAHEAD)  # first: clears the wake-up flag, so a change wakes the wait
        idle = [slot for slot in self.slots if slot.ready and slot.item is None]
        if not idle:
            return False
        with self._lock:
            retries = list(self._retries)
        window = retries + pending
        started = False
        for item, slot in self.choose(window, idle):
            if item in retries:
                with self._lock:
                    self._retries.remove(item)
                claimed: QueueItem | None = item
            else:
                claimed = self.queue.claim(item.prompt_id)
            if claimed is None:  # deleted since the look
                continue
            self._needs.pop(item.prompt_id, None)
            slot.item = claimed
            slot.wake.set()
            started = True
        return started

    def _serve_slot(self, slot: Slot) -> None:
        """A slot's thread: runs what the dispatcher gives it through `Worker._run`, restarts a lost actor."""
        while not self._stopping.is_set():
            slot.wake.wait(IDLE_POLL_S)
            slot.wake.clear()
            item = slot.item
            if item is None:
                continue
            try:
                slot.worker._run(item)
            except RunLost as exc:
                log.warning("prompt %s is run again: %s", item.prompt_id, exc)
                with self._lock:
                    self._retries.insert(0, item)
            except Exception:
                log.exception("Ray worker %d hit an unexpected error", slot.index)
            slot.item = None
            self.queue.wake()
            if not slot.ready:  # lost: wait for Ray to restart the actor
                self._restart(slot)
                self.queue.wake()

    def _restart(self, slot: Slot) -> None:
        slot.files.clear()
        slot.keys.clear()
        slot.state = {}
        try:
            self._await_ready(slot)
        except RuntimeError:
            log.exception("Ray worker %d did not come back", slot.index)

    def lost(self, prompt_id: str, slot: Slot, how: str) -> RunLost:
        """The exception for a prompt whose worker died or hung: retried once, then failed with the reason."""
        slot.ready = False
        with self._lock:
            first = prompt_id not in self._retried
            self._retried[prompt_id] = slot.index
        if first:
            return RunLost(f"Ray worker {slot.index} (pid {slot.pid}) was lost running this prompt: {how}",
                           retry=True)
        return RunLost(f"The prompt was run twice and its worker was lost both times; the last time worker "
                       f"{slot.index} (pid {slot.pid}): {how}. It is not run again.", retry=False)

    def observe(self, slot: Slot, state: dict[str, Any]) -> None:
        """Takes a worker's own report as the truth about what it holds."""
        slot.files = set(state.get("models", []))
        slot.keys = set(state.get("keys", []))
        slot.state = {k: v for k, v in state.items() if k != "keys"}
