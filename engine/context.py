"""What a node sees while it runs: the long-lived environment and the per-node run context."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from latentgraph.engine.folders import Folders
from latentgraph.engine.interrupt import InterruptToken

if TYPE_CHECKING:
    from PIL.Image import Image

Sink = Callable[[str, dict[str, Any]], None]
S = TypeVar("S")


class Environment:
    """State that outlives a run: the base directory and shared services such as the model manager."""

    def __init__(self, base_dir: Path, folders: Folders | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.folders = folders or Folders(self.base_dir)
        self.services: dict[type | str, Any] = {}

    @overload
    def service(self, name: type[S], factory: Callable[[Environment], S]) -> S: ...

    @overload
    def service(self, name: str, factory: Callable[[Environment], Any]) -> Any: ...

    def service(self, name: type | str, factory: Callable[[Environment], Any]) -> Any:
        """The shared service keyed by `name`, created by `factory` on first use.

        Key a service by its class (`env.service(ModelManager, ...)`): the result is then typed, and no two packages
        can collide on a string. The engine knows nothing of what services hold; a service that holds memory
        implements `free()` (called by `free()` below, on /free) and may report `cache_bytes()`.
        """
        if name not in self.services:
            self.services[name] = factory(self)
        return self.services[name]

    def free(self) -> None:
        """Asks every service that holds memory to let it go."""
        for service in self.services.values():
            free = getattr(service, "free", None)
            if callable(free):
                free()

    def service_bytes(self) -> int:
        """Bytes the services say they hold (those that implement `cache_bytes()`)."""
        sizes = (getattr(service, "cache_bytes", None) for service in self.services.values())
        return sum(int(size()) for size in sizes if callable(size))


class RunContext:
    """Per-node handle for reporting progress and previews and for honouring interrupts."""

    def __init__(
        self,
        *,
        env: Environment,
        node_id: str,
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        interrupt: InterruptToken,
        sink: Sink,
    ) -> None:
        self.env = env
        self.node_id = node_id
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.extra_data = extra_data
        self.interrupt = interrupt
        self._sink = sink

    def check_interrupt(self) -> None:
        self.interrupt.check()

    def progress(self, value: int, max: int) -> None:  # noqa: A002 - ComfyUI's field name
        self._sink("progress", {"value": value, "max": max, "prompt_id": self.prompt_id, "node": self.node_id})

    def preview(self, image: Image) -> None:
        self._sink("preview", {"node": self.node_id, "prompt_id": self.prompt_id, "image": image})

    def send_image(self, image: Image) -> None:
        """An output image for the client itself (SaveImageWebsocket): sent whole, never throttled or shrunk, and,
        like a preview, not kept in the run's messages."""
        self._sink("preview", {"node": self.node_id, "prompt_id": self.prompt_id, "image": image, "output": True})
