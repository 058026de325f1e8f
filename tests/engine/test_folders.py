"""Model folders: listing, extra folders, names that would leave their folder, and listings kept until a change."""

from __future__ import annotations

import os
import time

import pytest
from latentgraph.engine.folders import Folders


def touch(path, content: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_lists_model_files_recursively_with_extra_folders(tmp_path):
    folders = Folders(tmp_path / "base")
    touch(tmp_path / "base" / "models" / "loras" / "style" / "ink.safetensors")
    touch(tmp_path / "base" / "models" / "loras" / "readme.txt")
    touch(tmp_path / "a1111" / "Lora" / "film.safetensors")
    folders.add("loras", tmp_path / "a1111" / "Lora")
    assert folders.list("loras") == ["film.safetensors", "style/ink.safetensors"]
    assert folders.find("loras", "film.safetensors") == (tmp_path / "a1111" / "Lora" / "film.safetensors").resolve()


def test_find_refuses_names_that_leave_the_folder(tmp_path):
    folders = Folders(tmp_path / "base")
    touch(tmp_path / "secret.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        folders.find("checkpoints", "../../secret.safetensors")


def test_symlinks_inside_a_model_folder_are_listed_and_found(tmp_path):
    """A shared collection links files and folders from elsewhere; what `list` shows, `find` must load."""
    folders = Folders(tmp_path / "base")
    touch(tmp_path / "disk" / "sd15.safetensors", b"weights")
    touch(tmp_path / "disk" / "more" / "xl.safetensors")
    root = tmp_path / "base" / "models" / "checkpoints"
    root.mkdir(parents=True)
    os.symlink(tmp_path / "disk" / "sd15.safetensors", root / "sd15.safetensors")
    os.symlink(tmp_path / "disk" / "more", root / "linked")
    assert folders.list("checkpoints") == ["linked/xl.safetensors", "sd15.safetensors"]
    assert folders.find("checkpoints", "sd15.safetensors").read_bytes() == b"weights"
    found = folders.find("checkpoints", "linked/xl.safetensors")
    assert found == (tmp_path / "disk" / "more" / "xl.safetensors").resolve()
    for escape in ("../../disk/sd15.safetensors", "linked/../../../disk/sd15.safetensors",
                   str(tmp_path / "disk" / "sd15.safetensors")):
        with pytest.raises(FileNotFoundError, match="not found"):
            folders.find("checkpoints", escape)


def test_listing_follows_added_and_removed_files_in_nested_folders(tmp_path):
    folders = Folders(tmp_path)
    root = tmp_path / "models" / "checkpoints"
    touch(root / "a.safetensors")
    assert folders.list("checkpoints") == ["a.safetensors"]
    time.sleep(0.01)  # the listing is cached by directory mtime: the change must land on a later timestamp
    touch(root / "sub" / "deep" / "b.safetensors")
    assert folders.list("checkpoints") == ["a.safetensors", "sub/deep/b.safetensors"]
    time.sleep(0.01)  # as above: a later mtime
    os.remove(root / "sub" / "deep" / "b.safetensors")
    touch(root / "sub" / "deep" / "c.ckpt")
    assert folders.list("checkpoints") == ["a.safetensors", "sub/deep/c.ckpt"]
