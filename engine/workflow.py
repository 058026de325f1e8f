"""The API-format workflow ("prompt"): node ids mapped to a class and its inputs, links as [node_id, index]."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError


@dataclass(frozen=True)
class Link:
    """An input fed by output `index` of node `node`."""

    node: str
    index: int


def as_link(value: Any) -> Link | None:
    """ComfyUI's rule: exactly a 2-element list of a string id and a number; anything else is a constant."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    ):
        return Link(value[0], int(value[1]))
    return None


def unwrap_constant(value: Any) -> Any:
    """A literal list travels as {"__value__": [...]} so that it is not read as a link."""
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


class PromptNode(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] | None = Field(default=None, alias="_meta")

    @cached_property
    def _links(self) -> dict[str, Link]:
        return {name: link for name, value in self.inputs.items() if (link := as_link(value)) is not None}

    def links(self) -> dict[str, Link]:
        return self._links

    def constants(self) -> dict[str, Any]:
        return {name: unwrap_constant(v) for name, v in self.inputs.items() if as_link(v) is None}


class Prompt(RootModel[dict[str, PromptNode]]):
    """A whole API-format workflow."""

    def items(self):
        return self.root.items()

    def __getitem__(self, node_id: str) -> PromptNode:
        return self.root[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.root


class PromptFormatError(ValueError):
    """The document is not an API-format workflow at all (as opposed to a workflow with faulty nodes)."""


def parse_prompt(data: Any) -> Prompt:
    if not isinstance(data, dict):
        raise PromptFormatError(f"a workflow must be a JSON object of nodes, not {type(data).__name__}")
    if not data:
        raise PromptFormatError("the workflow has no nodes")
    try:
        return Prompt.model_validate({str(k): v for k, v in data.items()})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PromptFormatError(f"node {where}: {first['msg']} (each node needs class_type and inputs)") from exc
