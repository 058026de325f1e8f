"""The one poll loop the tests may use: for state of another process (a server subprocess's HTTP answers, Ray
workers' /workers view) or of code under test that offers no event to wait on. Anything that can signal (a test
node, a test's own hook, a server's WebSocket) is waited on through that signal instead.

Both forms fail with an AssertionError naming what was awaited, so no wait can fall through silently, and both
return the predicate's last (truthy) answer, so a caller can wait for a value and use it."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = INTERVAL_S) -> T:
    """Calls `predicate` every `interval` seconds until it answers something truthy, which is returned; fails after
    `timeout` seconds with `what` (what was awaited) and the last answer in the message."""
    deadline = time.monotonic() + timeout
    while not (answer := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last answer: {answer!r})")
        time.sleep(interval)
    return answer


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], timeout: float, what: str,
                           interval: float = INTERVAL_S) -> T:
    """`wait_until` for a coroutine test: the predicate may be a plain or an async function, and the pause between
    calls yields to the event loop (which may be the one serving the state being polled)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = predicate()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last answer: {answer!r})")
        await asyncio.sleep(interval)


async def wait_for_event(event: asyncio.Event, timeout: float, what: str) -> None:
    """Waits for `event`, set by the test's own code (a hook, a test node), failing with `what` after `timeout`."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
