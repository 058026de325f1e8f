"""A real server process with the test nodes registered, for tests that kill and restart it.

Usage: python -m tests.server.server_process BASE_DIR  (prints "latentgraph is listening on URL" when ready)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from latentgraph.server.app import serve

from tests.server.helpers import options_for

if __name__ == "__main__":
    asyncio.run(serve(options_for(Path(sys.argv[1]), full=False, port=0)))
