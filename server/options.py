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
