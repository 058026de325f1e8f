"""The prompt queue and its history, kept in SQLite so that nothing is lost to a restart or a crash.

One table holds every prompt in one of three states: pending, running, done. A prompt moves pending -> running
when the worker claims it and running -> done when its result (outputs, status, messages) is written, in one
transaction each, so a crash leaves every prompt in exactly one state. A prompt found `running` at start-up was
cut off by the death of the process: it is moved to history as failed, with that reason, before anything else runs.

Queue order follows ComfyUI: by `number` ascending; `front: true` takes a negative number so it runs first.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    state TEXT NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    client_id TEXT,
    workflow_id TEXT,
    create_time INTEGER NOT NULL,
    start_time INTEGER,
    end_time INTEGER,
    done_seq INTEGER,
    status_str TEXT,
    completed INTEGER,
    messages TEXT,
    outputs TEXT,
    meta TEXT,
    error TEXT,
    outputs_count INTEGER,
    preview_output TEXT,
    nodes TEXT
);
CREATE INDEX IF NOT EXISTS prompts_state_number ON prompts(state, number);
CREATE INDEX IF NOT EXISTS prompts_done_seq ON prompts(done_seq);
"""

JOB_STATUS_SQL = ("CASE WHEN state = 'pending' THEN 'pending' WHEN state = 'running' THEN 'in_progress' "
                  "WHEN status_str = 'success' THEN 'completed' WHEN error IS NULL THEN 'cancelled' ELSE 'failed' END")
JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")  # cancelled: interrupted by a user
CRASH_REASON = ("The server stopped while this prompt was running (the process was killed or crashed), so it did "
                "not finish. Queue it again to retry.")
PREVIEWABLE = ("images", "video", "audio")


def now_ms() -> int:
    return int(time.time() * 1000)


class DuplicatePromptId(ValueError):
    """A prompt with this id is already queued or in history."""


class StorageError(RuntimeError):
    """The database could not be written (a full disk, most often); the server answers 507 and recovers once
    space is back."""


class DatabaseCorrupt(RuntimeError):
    """The queue database cannot be opened as one: the message names the file and how to recover."""


BACKUP_SUFFIX = ".backup"
BACKUP_EVERY = 100  # finished prompts between rolling backups (and one at every start)
log = logging.getLogger(__name__)


def _corrupt(path: Path, problem: str) -> DatabaseCorrupt:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    restore = (f"restore the last backup with `cp {backup} {path}`, or " if backup.is_file() and
               backup.stat().st_size > 0 else "")
    return DatabaseCorrupt(
        f"The queue and history database {path} is damaged ({problem}). To recover, stop the server, move the "
        f"damaged file aside (`mv {path} {path}.damaged`), then {restore}start again: without a file, the "
        "server starts with an empty history.")


STORAGE_HINT = "free some disk space in the server's base directory; the server recovers by itself once there is"


@dataclass
class QueueItem:
    """ComfyUI's queue item, `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    @property
    def client_id(self) -> str | None:
        client_id = self.extra_data.get("client_id")
        return client_id if isinstance(client_id, str) and client_id else None

    def as_list(self) -> list[Any]:
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """How many output files a prompt made, and the one to show for it (an `output` file first)."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if media_type in PREVIEWABLE and preview is None:
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


class PromptQueue:
    """Thread-safe: the event loop adds and reads, the worker thread claims and finishes."""

    def __init__(self, path: Path, history_limit: int = 10000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.history_limit = history_limit
        self._lock = threading.RLock()
        self._work = threading.Event()
        if path.is_file() and path.stat().st_size == 0:
            # SQLite would read an empty file as an empty database and history would silently be gone
            raise _corrupt(path, "the file is empty (0 bytes), which no saved database ever is")
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            check = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                raise _corrupt(path, "integrity check: " + "; ".join(str(c) for c in check[:3]))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            if "nodes" not in {row["name"] for row in self._db.execute("PRAGMA table_info(prompts)")}:
                self._db.execute("ALTER TABLE prompts ADD COLUMN nodes TEXT")  # a database from before node reports
            row = self._db.execute("SELECT MAX(ABS(number)) AS n, MAX(done_seq) AS s FROM prompts").fetchone()
        except sqlite3.DatabaseError as exc:  # not a database, truncated, malformed
            raise _corrupt(path, str(exc)) from exc
        self._counter = int(row["n"] or 0) + 1
        self._done_seq = int(row["s"] or 0)
        self._finished_since_backup = 0
        self.backup()
        # Results the database refused (disk full): the prompt is over and shown as failed from here, and the
        # record is written as soon as the database accepts writes again (see flush_unrecorded).
        self._unrecorded: dict[str, tuple[Any, ...]] = {}
        self.recovered = self._recover_crashed()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def backup(self) -> None:
        """A consistent copy of the database beside it (`<name>.backup`), made with SQLite's online backup API
        while the server runs; written under a temporary name and renamed, so a failed backup never replaces the
        last good one. A failure is logged, never raised: the backup must not stop the queue."""
        target = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        temporary = target.with_name(target.name + ".tmp")
        try:
            with self._lock:
                copy = sqlite3.connect(temporary)
                try:
                    self._db.backup(copy)
                finally:
                    copy.close()
            os.replace(temporary, target)
            self._finished_since_backup = 0
        except (sqlite3.Error, OSError) as exc:
            log.warning("the queue database could not be backed up to %s: %s", target, exc)
            temporary.unlink(missing_ok=True)

    def _recover_crashed(self) -> list[str]:
        """Prompts left `running` by a dead process go to history as failed, with the reason."""
        with self._lock:
            rows = self._db.execute("SELECT prompt_id, start_time FROM prompts WHERE state = 'running' "
                                    "ORDER BY start_time").fetchall()
            for row in rows:
                error = {
                    "prompt_id": row["prompt_id"], "node_id": None, "node_type": None, "executed": [],
                    "exception_message": CRASH_REASON, "exception_type": "ServerStopped", "traceback": [],
                    "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(),
                }
                messages = [["execution_start", {"prompt_id": row["prompt_id"], "timestamp": row["start_time"]}],
                            ["execution_error", error]]
                self._finish_locked(row["prompt_id"], "error", False, messages, {}, {}, error)
            return [row["prompt_id"] for row in rows]

    # -- queue --------------------------------------------------------------------------------------------------

    def add(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str], *,
            front: bool = False, number: float | None = None) -> QueueItem:
        workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") if isinstance(
            extra_data.get("extra_pnginfo"), dict) else None
        workflow_id = workflow.get("id") if isinstance(workflow, dict) and isinstance(workflow.get("id"), str) \
            else None
        client_id = QueueItem(0, prompt_id, prompt, extra_data, outputs).client_id
        with self._lock:
            if number is None:
                number = self._counter
            self._counter = max(self._counter, int(abs(number))) + 1
            if front:
                number = -abs(number)
            if prompt_id in self._unrecorded:
                raise DuplicatePromptId(prompt_id)
            try:
                self._db.execute(
                    "INSERT INTO prompts (prompt_id, number, state, prompt, extra_data, outputs_to_execute, "
                    "client_id, workflow_id, create_time) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                    (prompt_id, number, json.dumps(prompt), json.dumps(extra_data), json.dumps(outputs),
                     client_id, workflow_id, now_ms()))
            except sqlite3.IntegrityError as exc:
                raise DuplicatePromptId(prompt_id) from exc
            except sqlite3.Error as exc:
                raise StorageError(f"the prompt could not be stored: {exc}") from exc
        self._work.set()
        return QueueItem(number, prompt_id, prompt, extra_data, outputs)

    def wait(self, timeout: float) -> None:
        """Blocks the worker until something is added after its last `claim_next` (or `timeout` passes)."""
        self._work.wait(timeout)

    def wake(self) -> None:
        self._work.set()

    def claim_next(self) -> QueueItem | None:
        """The first pending prompt, now marked running; None when nothing is pending."""
        self._work.clear()  # before looking, so that an add() after the look always wakes the next wait()
        with self._lock:
            try:
                row = self._db.execute("SELECT * FROM prompts WHERE state = 'pending' ORDER BY number, rowid "
                                       "LIMIT 1").fetchone()
                if row is None:
                    return None
                self._db.execute("UPDATE prompts SET state = 'running', start_time = ? WHERE prompt_id = ?",
                                 (now_ms(), row["prompt_id"]))
            except sqlite3.Error as exc:
                raise StorageError(f"the queue could not be updated: {exc}") from exc
            return self._item(row)

    def peek_pending(self, limit: int) -> list[QueueItem]:
        """The first `limit` pending prompts in queue order, claiming none: a dispatcher choosing among several
        workers looks ahead. Clears the wake-up flag first, as `claim_next` does, so an add() after the look
        always wakes the next wait()."""
        self._work.clear()
        with self._lock:
            rows = self._db.execute("SELECT * FROM prompts WHERE state = 'pending' ORDER BY number, rowid LIMIT ?",
                                    (limit,)).fetchall()
        return [self._item(row) for row in rows]

    def claim(self, prompt_id: str) -> QueueItem | None:
        """Marks this pending prompt running and returns it; None when it is no longer pending (deleted, or
        claimed already)."""
        with self._lock:
            try:
                row = self._db.execute("SELECT * FROM prompts WHERE state = 'pending' AND prompt_id = ?",
                                       (prompt_id,)).fetchone()
                if row is None:
                    return None
                self._db.execute("UPDATE prompts SET state = 'running', start_time = ? WHERE prompt_id = ?",
                                 (now_ms(), prompt_id))
            except sqlite3.Error as exc:
                raise StorageError(f"the queue could not be updated: {exc}") from exc
            return self._item(row)

    def finish(self, prompt_id: str, status_str: str, completed: bool, messages: list[Any],
               outputs: dict[str, Any], meta: dict[str, Any], error: dict[str, Any] | None) -> None:
        """Moves a prompt to history. When the database refuses the write, the prompt is failed in memory with
        the reason (so nothing shows it running), the record waits for `flush_unrecorded`, and StorageError is
        raised for the worker to tell the client."""
        with self._lock:
            try:
                self._finish_locked(prompt_id, status_str, completed, messages, outputs, meta, error)
                self._finished_since_backup += 1
                if self._finished_since_backup >= BACKUP_EVERY:
                    self.backup()
            except sqlite3.Error as exc:
                reason = (f"The prompt ran, but its result could not be stored ({exc}); {STORAGE_HINT}. Its "
                          "outputs, if any were saved, are listed; the prompt counts as failed.")
                failed = {
                    "prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                    "exception_message": reason, "exception_type": "StorageError", "traceback": [],
                    "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(),
                }
                kept = [m for m in messages if m and m[0] == "execution_start"]
                self._unrecorded[prompt_id] = (prompt_id, "error", False, [*kept, ["execution_error", failed]],
                                               outputs, meta, failed)
                raise StorageError(reason) from exc

    def set_nodes(self, prompt_id: str, nodes: dict[str, Any]) -> None:
        """Stores the executor's per-node report of a prompt (status, why it ran, costs) for history and jobs."""
        with self._lock:
            self._db.execute("UPDATE prompts SET nodes = ? WHERE prompt_id = ?",
                             (json.dumps(nodes, default=str), prompt_id))

    def flush_unrecorded(self) -> bool:
        """Writes the results the database refused earlier; True when none is left (the worker may go on)."""
        with self._lock:
            for prompt_id, record in list(self._unrecorded.items()):
                try:
                    self._finish_locked(*record)
                except sqlite3.Error:
                    return False
                del self._unrecorded[prompt_id]
            return True

    def unrecorded_error(self, prompt_id: str) -> dict[str, Any] | None:
        """The failure of a prompt whose result is not yet in the database, if it is one."""
        with self._lock:
            record = self._unrecorded.get(prompt_id)
        return record[6] if record else None

    def _finish_locked(self, prompt_id: str, status_str: str, completed: bool, messages: list[Any],
                       outputs: dict[str, Any], meta: dict[str, Any], error: dict[str, Any] | None) -> None:
        self._done_seq += 1
        count, preview = outputs_summary(outputs)
        self._db.execute("BEGIN")
        try:
            self._write_finish(prompt_id, status_str, completed, messages, outputs, meta, error, count, preview)
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _write_finish(self, prompt_id: str, status_str: str, completed: bool, messages: list[Any],
                      outputs: dict[str, Any], meta: dict[str, Any], error: dict[str, Any] | None, count: int,
                      preview: dict[str, Any] | None) -> None:
        self._db.execute(
            "UPDATE prompts SET state = 'done', end_time = ?, done_seq = ?, status_str = ?, completed = ?, "
            "messages = ?, outputs = ?, meta = ?, error = ?, outputs_count = ?, preview_output = ? "
            "WHERE prompt_id = ?",
            (now_ms(), self._done_seq, status_str, int(completed), json.dumps(messages, default=str),
             json.dumps(outputs, default=str), json.dumps(meta), json.dumps(error, default=str) if error else None,
             count, json.dumps(preview) if preview else None, prompt_id))
        self._db.execute(
            "DELETE FROM prompts WHERE state = 'done' AND done_seq <= ("
            "SELECT done_seq FROM prompts WHERE state = 'done' ORDER BY done_seq DESC LIMIT 1 OFFSET ?)",
            (self.history_limit,))
        self._db.execute("COMMIT")

    @staticmethod
    def _item(row: sqlite3.Row) -> QueueItem:
        return QueueItem(row["number"], row["prompt_id"], json.loads(row["prompt"]), json.loads(row["extra_data"]),
                         json.loads(row["outputs_to_execute"]))

    def items(self, state: str) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM prompts WHERE state = ? ORDER BY number, rowid",
                                    (state,)).fetchall()
            unrecorded = set(self._unrecorded)
        return [self._item(row) for row in rows if row["prompt_id"] not in unrecorded]

    def remaining(self) -> int:
        """Pending plus running, ComfyUI's `queue_remaining` (a prompt failed for want of storage is over)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM prompts WHERE state IN ('pending', 'running')"
                                    ).fetchone()[0] - len(self._unrecorded)

    def state_of(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return row["state"] if row else None

    def delete_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Removes the given pending prompts (all of them when None); running and finished ones are untouched."""
        with self._lock:
            if prompt_ids is None:
                cursor = self._db.execute("DELETE FROM prompts WHERE state = 'pending'")
            else:
                cursor = self._db.executemany("DELETE FROM prompts WHERE state = 'pending' AND prompt_id = ?",
                                              [(p,) for p in prompt_ids])
            return cursor.rowcount

    # -- history ------------------------------------------------------------------------------------------------

    def _history_entry(self, row: sqlite3.Row) -> dict[str, Any]:
        record = self._unrecorded.get(row["prompt_id"])
        if record is not None:
            return {"prompt": self._item(row).as_list(), "outputs": record[4],
                    "status": {"status_str": "error", "completed": False, "messages": record[3]}, "meta": record[5]}
        if row["state"] != "done":
            return {"prompt": self._item(row).as_list(), "outputs": {},
                    "status": {"status_str": "running" if row["state"] == "running" else "pending",
                               "completed": False, "messages": []},
                    "meta": {}}
        return {
            "prompt": self._item(row).as_list(),
            "outputs": json.loads(row["outputs"]),
            "status": {"status_str": row["status_str"], "completed": bool(row["completed"]),
                       "messages": json.loads(row["messages"])},
            "meta": json.loads(row["meta"]),
        } | ({"latentgraph": {"nodes": json.loads(row["nodes"])}} if row["nodes"] else {})  # clients ignore it

    def history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """Finished prompts, oldest first; by default the newest `max_items` (ComfyUI's offset -1)."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state = 'done'").fetchone()[0]
            if offset is None:
                offset = max(0, total - max_items) if max_items is not None else 0
            rows = self._db.execute("SELECT * FROM prompts WHERE state = 'done' ORDER BY done_seq LIMIT ? OFFSET ?",
                                    (-1 if max_items is None else max_items, offset)).fetchall()
        return {row["prompt_id"]: self._history_entry(row) for row in rows}

    def lookup(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of any known prompt: finished, or pending/running with that status."""
        with self._lock:
            row = self._db.execute("SELECT * FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return self._history_entry(row) if row else None

    def delete_history(self, prompt_ids: list[str] | None = None) -> int:
        with self._lock:
            if prompt_ids is None:
                cursor = self._db.execute("DELETE FROM prompts WHERE state = 'done'")
            else:
                cursor = self._db.executemany("DELETE FROM prompts WHERE state = 'done' AND prompt_id = ?",
                                              [(p,) for p in prompt_ids])
            return cursor.rowcount

    # -- jobs (the editor's unified queue + history view) -------------------------------------------------------

    def _job(self, row: sqlite3.Row, full: bool) -> dict[str, Any]:
        job: dict[str, Any] = {
            "id": row["prompt_id"],
            "status": row["job_status"],
            "priority": int(row["number"]) if float(row["number"]).is_integer() else row["number"],
            "create_time": row["create_time"],
            "execution_start_time": row["start_time"],
            "execution_end_time": row["end_time"],
            "execution_error": json.loads(row["error"]) if row["error"] else None,
            "outputs_count": row["outputs_count"] or 0,
            "preview_output": json.loads(row["preview_output"]) if row["preview_output"] else None,
            "workflow_id": row["workflow_id"],
        }
        job = {k: v for k, v in job.items() if v is not None}
        if row["prompt_id"] in self._unrecorded:
            job["status"], job["execution_error"] = "failed", self._unrecorded[row["prompt_id"]][6]
        if full:
            entry = self._history_entry(row)
            job["outputs"] = entry["outputs"]
            job["execution_status"] = entry["status"]
            job["workflow"] = {"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]}
            if "latentgraph" in entry:
                job["latentgraph"] = entry["latentgraph"]
        return job

    def jobs(self, statuses: list[str] | None = None, workflow_id: str | None = None, sort_by: str = "created_at",
             descending: bool = True, limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        statuses = list(statuses or JOB_STATUSES)
        where = f"job_status IN ({', '.join('?' * len(statuses))})"
        params: list[Any] = list(statuses)
        if workflow_id is not None:
            where += " AND workflow_id = ?"
            params.append(workflow_id)
        direction = "DESC" if descending else "ASC"
        order = (f"COALESCE(end_time - start_time, 0) {direction}" if sort_by == "execution_duration"
                 else f"create_time {direction}, rowid {direction}")
        columns = ("prompt_id, number, state, create_time, start_time, end_time, error, outputs_count, "
                   f"preview_output, workflow_id, {JOB_STATUS_SQL} AS job_status")
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM (SELECT {JOB_STATUS_SQL} AS job_status, workflow_id "
                                     f"FROM prompts) WHERE {where}", params).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM (SELECT rowid, {columns} FROM prompts) WHERE {where} "
                                    f"ORDER BY {order} LIMIT ? OFFSET ?",
                                    [*params, -1 if limit is None else limit, offset]).fetchall()
        return [self._job(row, full=False) for row in rows], total

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT *, {JOB_STATUS_SQL} AS job_status FROM prompts WHERE prompt_id = ?",
                                   (prompt_id,)).fetchone()
        return self._job(row, full=True) if row else None
