"""Sub-commands of `latentgraph`, one per module, each exposing `register(subparsers)`."""
