"""Fixtures: a base directory with an input image, and a real in-process server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from latentgraph.server.app import create_app

from tests.server.helpers import options_for, write_input_image


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    write_input_image(tmp_path)
    return tmp_path


@pytest.fixture
async def client(aiohttp_client, base_dir):
    """An aiohttp client talking to a real server listening on 127.0.0.1 (pytest-aiohttp's TestServer)."""
    app = create_app(options_for(base_dir, preview_interval_s=0.0))
    return await aiohttp_client(app)
