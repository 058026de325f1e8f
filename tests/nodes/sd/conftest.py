"""A tiny SD1 checkpoint written once per session, and environments whose models folder holds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components, write_tiny_checkpoint

TINY = "tiny.safetensors"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and threaded torch on a busy 2-core machine slows down manyfold.

    Used by the SD1 test modules (`pytestmark`), not forced on the other suites in this folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_parts():
    return build_tiny_pipeline_components(seed=0)


@pytest.fixture(scope="session")
def registry():
    return load_registry(plugins=False)


def with_checkpoint(base: Path, tiny_file: Path) -> Path:
    """A base directory whose models/checkpoints holds the tiny checkpoint (a hard link: it must be inside)."""
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    os.link(tiny_file, base / "models" / "checkpoints" / TINY)
    return base


@pytest.fixture
def base_dir(tmp_path: Path, tiny_file: Path) -> Path:
    return with_checkpoint(tmp_path, tiny_file)


@pytest.fixture
def executor(registry, base_dir: Path) -> Executor:
    return Executor(registry, make_environment(base_dir))


@pytest.fixture(scope="module")
def shared_executor(registry, tiny_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Executor:
    """One executor (and so one model manager and cache) for a whole test module."""
    return Executor(registry, make_environment(with_checkpoint(tmp_path_factory.mktemp("base"), tiny_file)))
