"""Declaring a route's HTTP contract beside its handler, once: `@operation(...)` names its body models.

`/openapi.json` (server.openapi) is generated from these declarations and the app's router, so a route cannot be
served undocumented without the route-coverage test noticing, and a body cannot be documented in two places.
The models live in server.api_models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from latentgraph.server.jsonio import ApiError
from pydantic import BaseModel, ValidationError

Handler = TypeVar("Handler", bound=Callable[..., Any])
Model = TypeVar("Model", bound=BaseModel)
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


def parse_body(body: dict[str, Any], model: type[Model], messages: Mapping[str, tuple[str, str]], *,
               kind: str = "invalid_request", **extra: Any) -> Model:
    """`body` checked against its declared model, strictly (no coercion), or a 400 about the first bad field.

    `messages` gives each field's (message, details) so that clients keep seeing the errors they know; a field
    without one gets pydantic's own words. `extra` is added to the error body (e.g. `node_errors` for /prompt).
    """
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        message, details = messages.get(name, (f"Invalid {name}", str(first["msg"])))
        raise ApiError(400, kind, message, details, **extra) from exc
