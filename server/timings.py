"""Recorded node timings, in SQLite beside the queue, by class, input shapes and device: what estimates learn from.

One row per node execution: the class, the device, the shapes of its tensor inputs, the steps and pixels it
worked on (from its constants, see `engine.insight`), its wall time, peak memory and the bytes its result holds
in the cache. Only the newest rows per class and device are kept, so the table stays small however long the
server runs and the estimate follows the machine as it is now (a new driver, another model on the same class).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentgraph.engine.insight import Timing

if TYPE_CHECKING:
    from latentgraph.engine.executor import RunResult
    from latentgraph.server.queue import PromptQueue

SCHEMA = """
CREATE TABLE IF NOT EXISTS node_timings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class_type TEXT NOT NULL,
    device TEXT NOT NULL,
    shapes TEXT,
    steps INTEGER,
    pixels INTEGER,
    wall_ms REAL NOT NULL,
    peak_bytes INTEGER,
    cache_bytes INTEGER,
    prompt_id TEXT,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS node_timings_class ON node_timings(class_type, device, id);
"""
KEEP_PER_CLASS = 200
HISTORY_ROWS = 50


class TimingStore:
    """Thread-safe: the worker records after each prompt, estimates read from the event loop's threads."""

    def __init__(self, path: Path, keep_per_class: int = KEEP_PER_CLASS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_per_class = keep_per_class
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, device: str, nodes: dict[str, dict[str, Any]], prompt_id: str | None = None) -> int:
        """Stores every node of a run's report that executed to the end; returns how many rows were written."""
        rows = [(report["class_type"], device, report.get("shapes"), report.get("steps"), report.get("pixels"),
                 float(report["wall_ms"]), report.get("peak_bytes"), report.get("cache_bytes"), prompt_id,
                 int(time.time() * 1000))
                for report in nodes.values() if report.get("status") == "ran" and report.get("wall_ms") is not None]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO node_timings (class_type, device, shapes, steps, pixels, wall_ms, peak_bytes, "
                "cache_bytes, prompt_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for class_type in {row[0] for row in rows}:
                self._db.execute(
                    "DELETE FROM node_timings WHERE class_type = ? AND device = ? AND id <= ("
                    "SELECT id FROM node_timings WHERE class_type = ? AND device = ? ORDER BY id DESC "
                    "LIMIT 1 OFFSET ?)", (class_type, device, class_type, device, self.keep_per_class))
            self._db.execute("COMMIT")
        return len(rows)

    def history(self, class_type: str, device: str, limit: int = HISTORY_ROWS) -> list[Timing]:
        """The newest timings of a class on a device, newest first (the estimate's `history` callable)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT shapes, steps, pixels, wall_ms FROM node_timings WHERE class_type = ? AND device = ? "
                "ORDER BY id DESC LIMIT ?", (class_type, device, limit)).fetchall()
        return [Timing(shapes, steps, pixels, wall_ms) for shapes, steps, pixels, wall_ms in rows]

    def summary(self) -> list[dict[str, Any]]:
        """Per class and device: how many timings are kept and their median-ish (average) wall time."""
        with self._lock:
            rows = self._db.execute(
                "SELECT class_type, device, COUNT(*), AVG(wall_ms), MAX(peak_bytes) FROM node_timings "
                "GROUP BY class_type, device ORDER BY class_type, device").fetchall()
        return [{"class_type": c, "device": d, "count": n, "mean_ms": round(ms, 2), "max_peak_bytes": peak}
                for c, d, n, ms, peak in rows]


def record_run(queue: PromptQueue, store: TimingStore) -> Callable[[RunResult, str], None]:
    """The executor listener that keeps each run's node report with its prompt (for /history and /jobs) and its
    timings in the store. It runs as the run ends, before the worker writes the result and tells the client."""
    def listener(result: RunResult, prompt_id: str) -> None:
        nodes = result.nodes
        queue.set_nodes(prompt_id, nodes)
        store.record(result.device, nodes, prompt_id)

    return listener
