"""Declaring a route's HTTP contract beside its handler, once: `@operation(...)` names its body models.

`/openapi.json` (server.openapi) is generated from these declarations and the app's router, so a route cannot be
served undocumented without the route-coverage test noticing, and a body cannot be documented in two places.
The models live in server.api_models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])
ATTRIBUTE = "__api_operation__"


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers. Types are pydantic models or anything pydantic's TypeAdapter accepts."""

    summary: str
    response: Any = None  # None: no body (an empty 200)
    body: Any = None
    query: Any = None  # a model whose fields are the query parameters
    status: int = 200
    response_media: str = "application/json"
    body_media: str = "application/json"
    body_required: bool = True
    errors: tuple[int, ...] = (400,)
    description: str = ""
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def operation(summary: str, **details: Any) -> Callable[[Handler], Handler]:
    """Attaches an `Operation` to a handler; put it under the `@routes.get(...)` line."""

    def attach(handler: Handler) -> Handler:
        setattr(handler, ATTRIBUTE, Operation(summary, **details))
        return handler

    return attach


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, ATTRIBUTE, None)
