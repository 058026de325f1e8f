"""One local Ray cluster for the whole session (starting one costs ~20 s): CPU only, sized for the tests' workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local cluster with 4 logical CPUs: a 2-worker server and two standalone workers fit at once."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
