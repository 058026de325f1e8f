"""`python -m server` runs the latentgraph command line."""

import sys

from server.cli import main

sys.exit(main())
