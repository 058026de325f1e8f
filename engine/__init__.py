"""The generic graph engine: node declarations, validation, a content-addressed cache and the executor.

It knows nothing of diffusion or HTTP, so that it can be tested and reasoned about on graphs of cheap nodes.
"""
