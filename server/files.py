"""Safe file access for /view and the upload routes: names from requests never reach outside their folder.

A name is refused when it is absolute, has a `..` part, a backslash, a drive letter or a NUL, also after
percent-decoding (a name that only becomes a traversal once decoded again is still an attack); a path that
resolves (following symlinks) outside its folder is refused too. Uploads are size-limited, must open and verify
as images in Pillow, and never overwrite an existing file unless asked: a clash becomes `name (1).png`, unless
the bytes are identical, in which case the existing file is the answer.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote

from latentgraph.engine.folders import Folders
from latentgraph.server.jsonio import ApiError
from PIL import Image, UnidentifiedImageError

FOLDER_TYPES = ("input", "output", "temp")
MAX_NAME_LENGTH = 255
_DRIVE = re.compile(r"^[a-zA-Z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def folder_root(folders: Folders, kind: str) -> Path:
    if kind not in FOLDER_TYPES:
        raise ApiError(400, "invalid_request", "Unknown folder type", f"type must be one of {list(FOLDER_TYPES)}, "
                       f"not {kind!r}"[:200])
    return {"input": folders.input_dir, "output": folders.output_dir, "temp": folders.temp_dir}[kind].resolve()


def _check_part(value: str, what: str, *, allow_slash: bool) -> list[str]:
    decoded = value
    for _ in range(3):  # names that turn into traversals after one or two more rounds of decoding are refused too
        decoded = unquote(decoded)
    for candidate in {value, decoded}:
        if "\x00" in candidate or "\\" in candidate or _DRIVE.match(candidate) or candidate.startswith(("/", "~")):
            raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} must be a plain relative name")
        if _CONTROL.search(candidate):
            raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} must not contain control characters")
        parts = candidate.split("/")
        if not allow_slash and len(parts) > 1:
            raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} must not contain '/'")
        if any(p in ("..", ".") for p in parts):
            raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} must not contain '..' or '.' parts")
    if len(value) > MAX_NAME_LENGTH * 4:
        raise ApiError(400, "invalid_path", f"Invalid {what}", f"{what} is too long")
    return [p for p in value.split("/") if p]


def safe_path(root: Path, subfolder: str, filename: str) -> Path:
    """`root/subfolder/filename`, or a 400 when the request tries to leave `root` in any way."""
    name_parts = _check_part(filename, "filename", allow_slash=False)
    if not name_parts or len(filename) > MAX_NAME_LENGTH:
        raise ApiError(400, "invalid_path", "Invalid filename", "a filename of 1 to 255 characters is needed")
    sub_parts = _check_part(subfolder, "subfolder", allow_slash=True)
    path = root.joinpath(*sub_parts, filename)
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise ApiError(400, "invalid_path", "Path leaves its folder",
                       "the name (or a symlink on the way) points outside the folder it must stay in")
    return resolved


def _same_bytes(path: Path, data: bytes) -> bool:
    return path.stat().st_size == len(data) and hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(
        data).digest()


def verify_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "invalid_image", "The upload is not an image Pillow can read", str(exc)[:300]) from exc


def store_upload(root: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Writes `data` under root/subfolder and returns the name it got (renamed on a clash unless identical)."""
    target = safe_path(root, subfolder, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root):
        raise ApiError(400, "invalid_path", "Path leaves its folder", "the subfolder points outside its folder")
    if not overwrite:
        stem, suffix = os.path.splitext(filename)
        counter = 1
        while target.exists():
            if target.is_file() and _same_bytes(target, data):
                return target.name
            target = target.parent / f"{stem} ({counter}){suffix}"
            counter += 1
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise ApiError(400, "invalid_path", "Cannot write there", "the target exists and is not a regular file")
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target.name
