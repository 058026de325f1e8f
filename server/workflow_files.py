"""Reading a workflow from whatever file a user has: API-format JSON, an editor (UI-format) JSON, or a PNG.

A PNG saved by SaveImage (ours or ComfyUI's) carries the API prompt in its `prompt` text chunk and the editor's
graph in `workflow`; the prompt is what actually ran, so it is preferred, and the graph is converted when it is
the only one there.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentgraph.server.uiformat import ConversionError, is_ui_format, ui_to_api
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ObjectInfo = dict[str, Any] | Callable[[], dict[str, Any]]


class WorkflowFileError(ValueError):
    """A workflow file that cannot be read or understood; the message says what to do."""


def conversion_object_info() -> dict[str, Any]:
    """object_info of every installed node, for converting UI workflows (only types and input order matter)."""
    from latentgraph.nodes import load_registry, make_environment

    with tempfile.TemporaryDirectory(prefix="latentgraph-convert-") as scratch:
        return load_registry().object_info(make_environment(Path(scratch)))


def _object_info(object_info: ObjectInfo) -> dict[str, Any]:
    return object_info() if callable(object_info) else object_info


def _decode_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "a workflow is a JSON object saved from the editor or written in ComfyUI's API format"
        ) from exc


def workflow_from_data(data: Any, object_info: ObjectInfo, where: str) -> tuple[dict[str, Any], dict | None]:
    """(API prompt, UI workflow or None) from decoded JSON in either format."""
    if not isinstance(data, dict):
        raise WorkflowFileError(f"{where} holds a JSON {type(data).__name__}, not a workflow object")
    if is_ui_format(data):
        return ui_to_api(data, _object_info(object_info)), data
    wrapped = data.get("prompt")
    if isinstance(wrapped, dict) and "class_type" not in wrapped and set(data) <= {"prompt", "extra_data", "client_id"}:
        return workflow_from_data(data["prompt"], object_info, where)
    return data, None


def png_text_chunks(path: Path) -> dict[str, str]:
    try:
        with Image.open(path) as image:
            image.load()
            return {k: v for k, v in (getattr(image, "text", None) or {}).items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError) as exc:
        raise WorkflowFileError(f"cannot read PNG {path}: {exc}") from exc


def _from_png(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    chunks = png_text_chunks(path)
    ui = _decode_json(chunks["workflow"], f"the 'workflow' chunk of {path}") if "workflow" in chunks else None
    ui = ui if is_ui_format(ui) else None
    if "prompt" in chunks:
        prompt = _decode_json(chunks["prompt"], f"the 'prompt' chunk of {path}")
        if isinstance(prompt, dict) and prompt:
            return prompt, ui
    if ui is not None:
        return ui_to_api(ui, _object_info(object_info)), ui
    raise WorkflowFileError(f"{path} carries no workflow: it has no 'prompt' or 'workflow' text chunk "
                            "(only PNGs saved by SaveImage here or in ComfyUI do)")


def load_workflow(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    """(API prompt, UI workflow or None) from a .json file (API or UI format) or a .png that carries one.

    `object_info` may be a callable so that the node registry is only built when a UI workflow needs converting.
    Raises WorkflowFileError with a message that names what is wrong (for a conversion error, the node).
    """
    try:
        return _load(Path(path), object_info)
    except ConversionError as exc:
        raise WorkflowFileError(f"cannot convert the editor workflow in {path}: {exc}") from exc


def _load(path: Path, object_info: ObjectInfo) -> tuple[dict[str, Any], dict | None]:
    try:
        with path.open("rb") as handle:
            is_png = handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        if is_png:
            return _from_png(path, object_info)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFileError(f"cannot read workflow file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(f"{path} is neither a JSON workflow nor a PNG that carries one") from exc
    return workflow_from_data(_decode_json(text, str(path)), object_info, str(path))
