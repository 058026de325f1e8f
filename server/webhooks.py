"""Calling a caller back when its run finishes: one POST of the result, retried with backoff on failure.

A thread per callback waits for the run to leave the queue, then POSTs the run's JSON to the URL until an answer in
the 2xx range comes back: a transient failure (a 5xx, a refused connection, a timeout) is retried after 0.5 s, 1 s,
2 s, ... up to `attempts` tries, so the receiver sees exactly one accepted call per run. The thread is a daemon and
callbacks live in memory: a callback still pending when the server stops is not made after a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ATTEMPTS = 6
BACKOFF_S = 0.5
TIMEOUT_S = 10.0
POLL_S = 0.1


def check_callback_url(url: str) -> str | None:
    """Why `url` cannot be called back (None when it can): an absolute http(s) URL with a host is needed."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the callback must be an absolute http:// or https:// URL"
    if len(url) > 2000:
        return "the callback URL is longer than 2000 characters"
    return None


def post_json(url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
              timeout: float = TIMEOUT_S) -> int:
    """The HTTP status of one POST of `body` (a connection failure raises OSError)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "latentgraph-webhook", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - http(s) checked above
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver(url: str, body: dict[str, Any], run_id: str, attempts: int = ATTEMPTS,
            backoff_s: float = BACKOFF_S) -> bool:
    """POSTs until a 2xx answer; True when one came. The run id goes along as `Idempotency-Key`, so a receiver
    that saw a call whose answer was lost can tell the retry apart."""
    for attempt in range(attempts):
        try:
            status = post_json(url, body, {"Idempotency-Key": run_id})
            if 200 <= status < 300:
                return True
            reason = f"answered {status}"
        except (OSError, ValueError) as exc:
            reason = str(exc)
        log.info("callback for run %s, try %d of %d: %s", run_id, attempt + 1, attempts, reason)
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2**attempt)
    log.warning("callback for run %s to %s failed %d times; giving up", run_id, url, attempts)
    return False


def call_back_when_done(url: str, run_id: str, finished: Callable[[], dict[str, Any] | None],
                        attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S) -> threading.Thread:
    """Starts the thread that waits until `finished()` gives the run's result (None while it runs), then delivers
    it. `finished` raising (the server closed its queue) ends the wait without a call."""

    def wait_then_deliver() -> None:
        try:
            while (body := finished()) is None:
                time.sleep(POLL_S)
        except Exception:  # the server is shutting down
            log.info("callback for run %s dropped: the server stopped before the run finished", run_id)
            return
        deliver(url, body, run_id, attempts, backoff_s)

    thread = threading.Thread(target=wait_then_deliver, name=f"webhook-{run_id[:8]}", daemon=True)
    thread.start()
    return thread


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b1d7c52-54a4-4e63-9c1e-0d6f3f1c2a13")
RECORD = "idempotency"  # extra_data key holding the hash of the request a key was first used with


def idempotent_id(scope: str, key: str) -> str:
    """The id a request with idempotency `key` gets: the same key (in the same scope) always gives the same id, so
    the queue, which refuses a second prompt with an id it holds, finds the first one."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{scope}\n{key}"))


def request_hash(value: Any) -> str:
    """Fingerprint of what was asked, to tell a repeated request from a different one reusing its key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def prompt_result(queue: Any, prompt_id: str) -> dict[str, Any] | None:
    """A finished prompt's history entry with its id (None while pending or running); LookupError once gone."""
    entry = queue.lookup(prompt_id)
    if entry is None:
        raise LookupError(prompt_id)
    if entry["status"]["status_str"] in ("pending", "running"):
        return None
    return {"prompt_id": prompt_id, **{k: entry[k] for k in ("outputs", "status", "meta")}}
