"""Cooperative cancellation: checked between nodes and by long nodes at every step."""

from __future__ import annotations

import threading


class Interrupted(Exception):
    """Raised inside a run when its interrupt token was set."""


class InterruptToken:
    """A thread-safe flag that another thread sets to stop the current run."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("interrupted")
