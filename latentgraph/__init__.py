"""latentgraph: a node-graph workflow engine for Stable Diffusion that speaks ComfyUI's protocol.

The stable surface for plugins is `latentgraph.api`; everything else may change between minor versions.
"""
