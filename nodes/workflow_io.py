"""Nodes that declare a saved workflow's interface: its named inputs, its named outputs, its version.

They are declarations, not computations: they have no sockets and are no output nodes, so the validator and the
executor never look at them and a workflow runs exactly as it did before they were added (same prompt, same cache
keys, same pixels). The workflow library (`latentgraph.engine.library`) reads them to turn a saved workflow into a
typed function that the CLI, the HTTP API and other workflows call by input name.

An input points at the widget it sets, written as `--set` writes it: `NODE.INPUT`, NODE being a node id or title
(`3.seed`, `KSampler.seed`); several targets separated by commas set the same value everywhere (one seed for two
samplers). The input's type, range and choices are those of the widget it sets, and its default is the widget's
current value, so the editor's widget stays the one place where the default is edited.
"""

from __future__ import annotations

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node

NAME_TOOLTIP = "Name callers use: --input NAME=VALUE on the command line, a JSON property over HTTP"


def _never_run(self: Node, ctx: RunContext) -> tuple:
    """A declaration is never executed: nothing links to it and it is not an output node."""
    return ()


class WorkflowInput(Node):
    """Declares a named input of this workflow; it sets the widget(s) named in `target` (NODE.INPUT, NODE an id or
    title; several separated by commas). Type, range and default are those of the widget."""

    CATEGORY = "workflow"
    DISPLAY_NAME = "Workflow Input"
    execute = _never_run

    name: str = Input("prompt", tooltip=NAME_TOOLTIP)
    target: str = Input("", tooltip="The widget(s) this input sets: NODE.INPUT, e.g. 'KSampler.seed' or "
                                    "'3.seed, 11.seed'")
    description: str = Input("", multiline=True, tooltip="Shown in --help, in the JSON Schema and in the editor")


class WorkflowOutput(Node):
    """Declares a named output: `source` is an output node (its saved images are the result) or NODE.OUTPUT for a
    value that other workflows use when this one is a node inside them."""

    CATEGORY = "workflow"
    DISPLAY_NAME = "Workflow Output"
    execute = _never_run

    name: str = Input("image", tooltip="Name of the output in run results and on the workflow's node")
    source: str = Input("", tooltip="An output node such as 'Save Image' or '9', or NODE.OUTPUT such as '8.IMAGE'")
    description: str = Input("", multiline=True, tooltip="Shown in listings and in the JSON Schema")


class WorkflowInfo(Node):
    """Describes the workflow as a whole: a human version (the content hash is always the exact version) and a
    description for listings."""

    CATEGORY = "workflow"
    DISPLAY_NAME = "Workflow Info"
    execute = _never_run

    version: str = Input("", tooltip="Human version, e.g. '1.2'; callers may pin it as NAME@1.2")
    description: str = Input("", multiline=True, tooltip="What the workflow does, for listings and --help")


DECLARATION_CLASSES = ("WorkflowInput", "WorkflowOutput", "WorkflowInfo")
