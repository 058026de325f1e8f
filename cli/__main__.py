"""`python -m latentgraph.cli` runs the latentgraph command line."""

import sys

from latentgraph.cli.main import main

sys.exit(main())
