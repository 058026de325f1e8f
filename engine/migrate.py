"""Upgrading saved workflows when a node's inputs change: per-node migrations, applied on load.

A node class carries its `VERSION` (engine.node) and, when its inputs have changed incompatibly, `MIGRATIONS`: a
dict from the version a step upgrades *from* to a function taking that version's inputs and returning the next
version's (a renamed input, a split value, a changed unit). Every workflow passes through `migrate_prompt` before
validation (it is the registry's first expander), API format directly and the editor's format after conversion.

Which version a node was saved at: `_meta.node_version` when the workflow says so (a writer that knows the version
records it), else the oldest version the class has a migration from. ComfyUI's editor writes no such marker, so a
migration must leave inputs that already have the new shape unchanged (rename only when the old name is present);
then an unmarked workflow saved before or after the change loads the same. A node saved at a version with no path
to the current one is an error naming the node, its class and both versions, and nothing runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MARKER = "node_version"


class MigrationError(ValueError):
    """A saved node cannot be brought to its class's current version."""


def _saved_version(node: dict[str, Any], migrations: dict[int, Migration], current: int) -> int:
    meta = node.get("_meta")
    marked = meta.get(MARKER) if isinstance(meta, dict) else None
    if isinstance(marked, int) and not isinstance(marked, bool):
        return marked
    return min(migrations) if migrations else current


def migrate_node(node_id: str, node: dict[str, Any], cls: type) -> dict[str, Any]:
    """The node upgraded to `cls.VERSION` (itself when nothing applies); MigrationError when no path exists."""
    migrations: dict[int, Migration] = getattr(cls, "MIGRATIONS", None) or {}
    current = int(getattr(cls, "VERSION", 1))
    version = _saved_version(node, migrations, current)
    if version == current:
        return node
    name = cls.__name__
    if version > current:
        raise MigrationError(f"node {node_id} ({name}) was saved by a newer version ({version}) of {name} than "
                             f"this one ({current}); update latentgraph or the node package")
    inputs = copy.deepcopy(node.get("inputs") or {})
    while version < current:
        step = migrations.get(version)
        if step is None:
            raise MigrationError(f"node {node_id} ({name}) was saved at version {version}; {name} is now version "
                                 f"{current} and has no migration from version {version}")
        inputs = step(inputs)
        version += 1
    saved_meta = node.get("_meta")
    meta: dict[str, Any] = saved_meta if isinstance(saved_meta, dict) else {}
    return {**node, "inputs": inputs, "_meta": {**meta, MARKER: current}}


def migrate_prompt(data: Any, registry: Any, env: Any = None) -> Any:
    """An API-format workflow with every node brought to its class's version (a registry expander); the input is
    not modified, and a workflow that needs nothing comes back as the same object."""
    if not isinstance(data, dict):
        return data
    migrated: dict[str, Any] | None = None
    for node_id, node in data.items():
        if not isinstance(node, dict):
            continue
        cls = registry.get(node.get("class_type")) if isinstance(node.get("class_type"), str) else None
        if cls is None or (not getattr(cls, "MIGRATIONS", None) and not _marked(node)):
            continue
        upgraded = migrate_node(str(node_id), node, cls)
        if upgraded is not node:
            migrated = migrated if migrated is not None else dict(data)
            migrated[node_id] = upgraded
    return migrated if migrated is not None else data


def _marked(node: dict[str, Any]) -> bool:
    meta = node.get("_meta")
    return isinstance(meta, dict) and MARKER in meta
