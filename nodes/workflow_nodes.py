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

import copy
import dataclasses
import logging
from typing import Any

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.library import (
    WORKFLOW_NODE_PREFIX,
    Interface,
    InterfaceError,
    Library,
    WorkflowVersion,
    extract_interface,
    workflow_node_name,
)
from latentgraph.engine.node import Input, InputOptions, Node
from latentgraph.engine.registry import Registry
from pydantic import create_model

log = logging.getLogger(__name__)

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


def _expanded_before_running(self: Node, ctx: RunContext) -> tuple:
    raise RuntimeError(f"{type(self).__name__} should have been expanded into its nodes before running")


def workflow_node_class(version: WorkflowVersion, interface: Interface, registry: Registry) -> type[Node]:
    """The node class the editor shows for a library workflow: one widget per declared input, with the type,
    constraints and choices of the widget it sets (its pydantic field, copied) and the workflow's value as default;
    one output per declared output. It is never executed: validation expands it into the workflow's nodes."""
    fields: dict[str, Any] = {}
    for name, inp in interface.inputs.items():
        target = inp.targets[0]
        target_cls = registry[version.prompt[target.node]["class_type"]]
        field = copy.copy(target_cls.model_fields[target.input])
        field.default = inp.default
        if inp.description:  # the workflow's words for the input, in the schema and as the editor's tooltip
            field.description = inp.description
            if isinstance(field.json_schema_extra, InputOptions):
                field.json_schema_extra = dataclasses.replace(
                    field.json_schema_extra, editor={**field.json_schema_extra.editor, "tooltip": inp.description})
        fields[name] = (field.annotation, field)
    cls = create_model(workflow_node_name(version.name), __base__=Node, __module__=__name__, **fields)
    cls.__doc__ = interface.description or f"The saved workflow {version.name}, as one node."
    cls.CATEGORY = "workflows"
    cls.RETURN_TYPES = tuple(out.type for out in interface.outputs.values())
    cls.RETURN_NAMES = tuple(interface.outputs)
    cls.execute = _expanded_before_running  # type: ignore[method-assign]
    return cls


def register_workflow_nodes(registry: Registry, env: Environment, library: Library | None = None) -> list[str]:
    """Registers (or refreshes) a `Workflow: NAME` node per library workflow whose declarations are valid here,
    so the editor lists saved workflows as nodes; returns the class names. Call again after workflows change."""
    library = library or Library.for_environment(env)
    names = []
    for version in library.scan().values():
        try:
            interface = extract_interface(version.prompt, registry, env)
            cls = workflow_node_class(version, interface, registry)
        except (InterfaceError, KeyError, TypeError, ValueError) as exc:  # e.g. a node type this registry lacks
            log.debug("workflow %s is not offered as a node: %s", version.name, exc)
            continue
        registry.register(cls)
        names.append(cls.__name__)
    return names


__all__ = ["WORKFLOW_NODE_PREFIX", "WorkflowInfo", "WorkflowInput", "WorkflowOutput", "register_workflow_nodes",
           "workflow_node_class"]
