"""Everything a server instance is configured by, so that the CLI, tests and launchers build it the same way."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from latentgraph.engine.context import Environment
from latentgraph.engine.registry import Registry

TOKEN_ENV = "LATENTGRAPH_TOKEN"
DEFAULT_PORT = 8188


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class RayOptions:
    """Execution on Ray workers (server/dispatch.py) instead of the in-process worker thread."""

    address: str | None = None  # None: start a local cluster; "auto" or an address: join that cluster
    workers: int | None = None  # None: one per GPU of the cluster (one worker on a CPU-only cluster)
    threads_per_worker: int = 1  # torch threads (and Ray CPUs) of each CPU worker
    hang_timeout_s: float = 600.0  # a running prompt's worker silent this long is treated as dead
    # prompts waiting for a busy worker's models before an idle worker loads them too: 2 let a worker slowed by
    # its first prompt lose its checkpoint's queue after 3 prompts (8 alternating over 2 workers loaded a copy)
    steal_backlog: int = 4
    shared_cache_bytes: int = 2 * 1024**3  # each shared cache tier's budget (object store, disk); 0: off

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.threads_per_worker < 1 or self.hang_timeout_s <= 0:
            raise ValueError("threads_per_worker must be at least 1 and hang_timeout_s positive")


@dataclass
class ServerOptions:
    """How one server runs: where its data lives, where it listens, who may talk to it, and its limits."""

    base_dir: Path = Path(".")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    history_limit: int = 10000
    max_upload_bytes: int = 100 * 1024 * 1024
    max_json_bytes: int = 32 * 1024 * 1024
    # A /prompt body, and the nodes its workflow may have (after subgraphs are expanded): every request's cost
    # stays bounded (validation is near-linear, so 10,000 nodes validate in well under a second).
    max_prompt_bytes: int = 8 * 1024 * 1024
    max_prompt_nodes: int = 10_000
    validation_budget_s: float = 10.0
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    preview_interval_s: float = 0.1
    preview_max_size: int = 512
    cache_bytes: int | None = None
    registry: Registry | None = None
    environment: Environment | None = None
    ray: RayOptions | None = None  # None: prompts run in this process (Ray is not imported)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV) or None
        if self.history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        if self.max_prompt_nodes < 1 or self.max_prompt_bytes < 1:
            raise ValueError("max_prompt_nodes and max_prompt_bytes must be at least 1")

    @property
    def database_path(self) -> Path:
        return self.base_dir / "latentgraph.sqlite3"
