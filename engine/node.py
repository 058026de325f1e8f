"""Declaring a node once, with Python types, and deriving its inputs, outputs and checks from that declaration.

A node is a pydantic model whose fields are its inputs. Constant inputs are validated and coerced per field by
pydantic; socket inputs (see engine.types) carry upstream values untouched. Everything the editor, the validator
and the cache need is read from the class by `node_spec`, so there is nothing to keep in sync by hand.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from latentgraph.engine.types import Socket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from latentgraph.engine.context import Environment, RunContext

ChoicesFn = Callable[["Environment"], list[str]]

HIDDEN_KINDS = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID")


@dataclass
class InputOptions:
    """Editor options and flags of one input; pydantic calls it to add the options to the JSON Schema."""

    editor: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    hidden: str | None = None
    choices: ChoicesFn | None = None

    def __call__(self, schema: dict[str, Any]) -> None:
        schema.update({f"x-{k}": v for k, v in self.editor.items()})


def Input(  # noqa: N802 - reads like pydantic's Field, which it wraps
    default: Any = ...,
    *,
    ge: float | None = None,
    le: float | None = None,
    step: float | None = None,
    round: float | bool | None = None,  # noqa: A002 - ComfyUI's option name
    multiline: bool | None = None,
    tooltip: str | None = None,
    control_after_generate: bool | None = None,
    image_upload: bool | None = None,
    force_input: bool | None = None,
    dynamic_prompts: bool | None = None,
    display: str | None = None,  # how the editor shows a number: "color" (0xRRGGBB picker), "slider", "number"
    optional: bool = False,
    choices: ChoicesFn | None = None,
) -> Any:
    """Declares an input: pydantic constraints plus the ComfyUI widget options the editor reads."""
    editor = {
        "step": step,
        "round": round,
        "multiline": multiline,
        "tooltip": tooltip,
        "control_after_generate": control_after_generate,
        "image_upload": image_upload,
        "forceInput": force_input,
        "dynamicPrompts": dynamic_prompts,
        "display": display,
    }
    options = InputOptions({k: v for k, v in editor.items() if v is not None}, optional=optional, choices=choices)
    return Field(default, ge=ge, le=le, description=tooltip, json_schema_extra=options)


def Hidden(kind: str) -> Any:  # noqa: N802 - a field declaration, like Input
    """Declares a hidden input filled by the executor: the whole PROMPT, the EXTRA_PNGINFO or the node's UNIQUE_ID."""
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"hidden input kind must be one of {HIDDEN_KINDS}, not {kind!r}")
    return Field(None, json_schema_extra=InputOptions(hidden=kind), exclude=True)


@dataclass
class NodeOutput:
    """What a node returns when it also has something to show: files written, text, previews."""

    outputs: tuple = ()
    ui: dict[str, Any] | None = None


class Node(BaseModel):
    """Base class of every node. Subclass it, declare inputs as fields, implement `execute`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="ignore")

    CATEGORY: ClassVar[str] = ""
    DISPLAY_NAME: ClassVar[str | None] = None
    OUTPUT_NODE: ClassVar[bool] = False
    DETERMINISTIC: ClassVar[bool] = True
    VERSION: ClassVar[int] = 1
    # Upgrades of saved inputs, keyed by the version they upgrade from (engine.migrate applies them on load).
    MIGRATIONS: ClassVar[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()
    RETURN_NAMES: ClassVar[tuple[str, ...] | None] = None

    def execute(self, ctx: RunContext) -> tuple | NodeOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        """A hash of outside state the constant inputs stand for (a file's content), so the cache sees changes."""
        return None

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """Validation across inputs that field types cannot express: a list of (input name, message)."""
        return []


@dataclass(frozen=True)
class InputSpec:
    """One input of a node, as the validator, executor and editor see it."""

    name: str
    type: str  # ComfyUI type name, or "COMBO" for a choice
    socket: bool
    required: bool
    optional: bool
    hidden: str | None
    default: Any
    options: dict[str, Any]
    literal_choices: tuple | None
    choices_fn: ChoicesFn | None
    adapter: TypeAdapter | None

    @property
    def has_default(self) -> bool:
        return self.default is not ...

    def choices(self, env: Environment) -> list | None:
        if self.literal_choices is not None:
            return list(self.literal_choices)
        if self.choices_fn is not None:
            return list(self.choices_fn(env))
        return None


@dataclass(frozen=True)
class NodeSpec:
    """The derived description of a node class."""

    cls: type[Node]
    inputs: dict[str, InputSpec]
    output_types: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")


_PRIMITIVES = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _socket_in(annotation: Any, metadata: list) -> Socket | None:
    for item in metadata:
        if isinstance(item, Socket):
            return item
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, Socket)), None)
    return None


def _type_name(annotation: Any) -> tuple[str, tuple | None]:
    base = _strip_optional(annotation)
    if typing.get_origin(base) is Literal:
        return "COMBO", typing.get_args(base)
    if base in _PRIMITIVES:
        return _PRIMITIVES[base], None
    return "*", None


def _input_spec(name: str, info: FieldInfo) -> InputSpec:
    options = info.json_schema_extra if isinstance(info.json_schema_extra, InputOptions) else InputOptions()
    socket = _socket_in(info.annotation, info.metadata)
    default = info.default if info.default is not Ellipsis and not info.is_required() else ...
    adapter: TypeAdapter[Any] | None
    if socket is not None:
        type_name, literal, adapter = socket.name, None, None
    else:
        type_name, literal = _type_name(info.annotation)
        if options.choices is not None:
            type_name = "COMBO"
        annotated = (info.annotation, *info.metadata)  # Annotated[...] needs the tuple form on Python 3.10
        target: Any = Annotated[annotated] if info.metadata else info.annotation  # pydantic's stubs vary by release
        adapter = None if options.hidden else TypeAdapter(target)
    editor = dict(options.editor)
    for constraint in info.metadata:
        for attr, key in (("ge", "min"), ("le", "max")):
            if getattr(constraint, attr, None) is not None:
                editor[key] = getattr(constraint, attr)
    if default is not ... and default is not None and socket is None:
        editor = {"default": default, **editor}
    if socket is not None:
        editor.pop("forceInput", None)
    optional = options.optional or (socket is not None and default is None)
    return InputSpec(
        name=name,
        type=type_name,
        socket=socket is not None,
        required=options.hidden is None and not optional,
        optional=optional,
        hidden=options.hidden,
        default=default,
        options=editor,
        literal_choices=literal,
        choices_fn=options.choices,
        adapter=adapter,
    )


@cache
def node_spec(cls: type[Node]) -> NodeSpec:
    """Reads a node class once; the result is shared by validation, execution and object_info."""
    inputs = {name: _input_spec(name, info) for name, info in cls.model_fields.items()}
    names = cls.RETURN_NAMES or cls.RETURN_TYPES
    if len(names) != len(cls.RETURN_TYPES):
        raise TypeError(f"{cls.__name__}: RETURN_NAMES and RETURN_TYPES differ in length")
    return NodeSpec(cls=cls, inputs=inputs, output_types=tuple(cls.RETURN_TYPES), output_names=tuple(names))
