"""The set of known node classes, and the editor-facing views derived from their declarations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latentgraph.engine.context import Environment
from latentgraph.engine.migrate import migrate_prompt
from latentgraph.engine.node import Node, NodeSpec, node_spec

Expander = Callable[[Any, "Registry", Environment], Any]


class Registry:
    """Node classes by ComfyUI class name; plugins that failed to load are kept in `load_errors`."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Node]] = {}
        self.load_errors: list[tuple[str, str]] = []
        self.expanders: list[Expander] = []

    def add_expander(self, expander: Expander) -> None:
        """Adds a rewrite applied to every workflow before validation (e.g. saved workflows used as nodes become
        their inner nodes), so that what runs, and what the cache sees, is plain nodes."""
        self.expanders.append(expander)

    def expand(self, data: Any, env: Environment) -> Any:
        """The workflow after every expander, then with each node upgraded to its class's version (engine.migrate);
        both raise ValueError for a workflow they cannot handle."""
        for expander in self.expanders:
            data = expander(data, self, env)
        return migrate_prompt(data, self, env)

    def register(self, cls: type[Node]) -> type[Node]:
        node_spec(cls)  # a malformed declaration fails here, at load time, not at run time
        self._classes[cls.__name__] = cls
        return cls

    def get(self, name: str) -> type[Node] | None:
        return self._classes.get(name)

    def __getitem__(self, name: str) -> type[Node]:
        """The class of a node known to be registered (KeyError otherwise); `get` for a maybe."""
        return self._classes[name]

    def spec(self, name: str) -> NodeSpec:
        return node_spec(self._classes[name])

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def object_info(self, env: Environment, name: str | None = None) -> dict[str, Any]:
        """ComfyUI's /object_info: what the editor builds its widgets and sockets from."""
        names = [name] if name is not None else self.names()
        return {n: self._object_info_entry(n, env) for n in names if n in self}

    def _object_info_entry(self, name: str, env: Environment) -> dict[str, Any]:
        spec = self.spec(name)
        sections: dict[str, dict[str, Any]] = {"required": {}, "optional": {}, "hidden": {}}
        for inp in spec.inputs.values():
            if inp.hidden:
                sections["hidden"][inp.name] = inp.hidden
                continue
            choices = inp.choices(env)
            type_entry: Any = choices if choices is not None else inp.type
            sections["required" if inp.required else "optional"][inp.name] = [type_entry, dict(inp.options)]
        cls = spec.cls
        return {
            "input": {k: v for k, v in sections.items() if v or k == "required"},
            "input_order": {k: list(sections[k]) for k in ("required", "optional") if sections[k]},
            "output": list(spec.output_types),
            "output_is_list": [False] * len(spec.output_types),
            "output_name": list(spec.output_names),
            "name": name,
            "display_name": cls.DISPLAY_NAME or name,
            "description": spec.description,
            "category": cls.CATEGORY,
            "output_node": cls.OUTPUT_NODE,
            "python_module": cls.__module__,
            "deprecated": False,
            "experimental": False,
        }

    def schema(self, name: str) -> dict[str, Any]:
        """JSON Schema of the node's inputs; socket inputs are marked with x-socket and their type."""
        spec = self.spec(name)
        schema = spec.cls.model_json_schema()
        for inp in spec.inputs.values():
            prop = schema.get("properties", {}).get(inp.name)
            if prop is not None and inp.socket:
                prop["x-socket"] = inp.type
        schema["x-outputs"] = [{"name": n, "type": t} for n, t in zip(spec.output_names, spec.output_types)]
        schema["x-output-node"] = spec.cls.OUTPUT_NODE
        return schema
