"""A model family from another package, registered through the `latentgraph.families` entry point, is loaded and
sampled by a workflow of stock nodes (CheckpointLoaderSimple, CLIPTextEncode, KSampler, VAEDecode, SaveImage)
with no change to latentgraph.

The toy family stores the tiny SD1 model in a layout of its own (diffusers names under `toy.<component>.`, configs
shipped next to its module), so the reference is independent of the toy's code: the same weights loaded as an SD1
checkpoint must draw the same pixels.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd import families
from latentgraph.nodes.sd.detect import UnknownCheckpoint, family_config
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from safetensors.torch import save_file

from .conftest import TINY, with_checkpoint
from .sd_helpers import output_pixels, run_context, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")

TOY_MODULE = '''
"""A toy model family: SD1's architecture, stored as toy.<component>.<diffusers name>, configs shipped beside."""
from pathlib import Path

from latentgraph.nodes.sd.checkpoint import (CheckpointInfo, build_text_encoder, build_unet, build_vae,
                                             file_identity, materialize)
from latentgraph.api import BaseFamily
from latentgraph.nodes.sd.handles import ClipHandle, ModelHandle, VaeHandle, component
from latentgraph.nodes.sd.services import model_manager

BUILD = {"unet": build_unet, "vae": build_vae, "text_encoder": build_text_encoder}


class Toy(BaseFamily):
    name = "toy"
    label = "Toy"
    config_dir = Path(__file__).resolve().parent / "toy_configs"

    def inspect(self, path, tensors=None):
        if tensors is None or not any(k.startswith("toy.") for k in tensors.shapes):
            return None
        configs = {c: self.config(c) for c in ("unet", "vae", "text_encoder", "scheduler")}
        return CheckpointInfo(path, "single", self.name, configs["scheduler"]["prediction_type"], configs,
                              identity=file_identity(path), extra={"tensors": tensors})

    def load_component(self, info, part, dtype):
        model = BUILD[part](info.configs[part])
        names = {k: f"toy.{part}.{k}" for k in model.state_dict()}
        loaded = info.extra["tensors"].read(list(names.values()))
        return materialize(model, {k: loaded[n] for k, n in names.items()}, dtype)

    def handles(self, info, env, require_vae=True):
        manager = model_manager(env)
        path, identity = info.path, info.identity
        model = ModelHandle(component(path, identity, "unet", manager, self), env, self,
                            scheduler_config=info.configs["scheduler"],
                            latent_scale=info.configs["vae"]["scaling_factor"])
        clip = ClipHandle(component(path, identity, "text_encoder", manager, self), env, self)
        vae = VaeHandle(component(path, identity, "vae", manager, self), env)
        return model, clip, vae


FAMILY = Toy()
'''


def _install(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> Path:
    """A real installed distribution (dist-info on sys.path) declaring a `latentgraph.families` entry point."""
    root.mkdir()
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{families.ENTRY_POINT_GROUP}]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def toy_installed(tmp_path: Path, tiny_parts, monkeypatch: pytest.MonkeyPatch):
    package = _install(tmp_path / "site", monkeypatch, "lg_toy_family", TOY_MODULE)
    configs = package / "toy_configs"
    configs.mkdir()
    for part in ("unet", "vae", "text_encoder"):
        config = getattr(tiny_parts, part).config
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        (configs / f"{part}.json").write_text(json.dumps(config, default=list))
    (configs / "scheduler.json").write_text(json.dumps(family_config("sd1", "scheduler")))
    _install(tmp_path / "broken", monkeypatch, "lg_broken_family", "raise ImportError('needs a missing library')\n")
    families.reload()
    yield tmp_path
    families.reload()
    for module in ("lg_toy_family", "lg_broken_family"):
        sys.modules.pop(module, None)


def _toy_file(parts, path: Path) -> Path:
    state = {f"toy.{name}.{k}": v.contiguous() for name in ("unet", "vae", "text_encoder")
             for k, v in getattr(parts, name).state_dict().items() if not k.endswith("position_ids")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def test_a_family_from_an_entry_point_is_loaded_and_sampled_by_stock_nodes(toy_installed: Path, tiny_parts,
                                                                           tiny_file: Path, registry) -> None:
    toy = families.family("toy")
    assert [name for name, _ in families.load_errors] == ["lg_broken_family"]
    assert "needs a missing library" in families.load_errors[0][1]
    assert families.family("sd1").label == "SD1.x"  # the built-ins are all still there

    base = with_checkpoint(toy_installed / "base", tiny_file)
    _toy_file(tiny_parts, base / "models" / "checkpoints" / "toy.safetensors")
    env = make_environment(base)
    model, clip, vae = CheckpointLoaderSimple(ckpt_name="toy.safetensors").execute(run_context(env))
    assert model.family is toy and clip.family is toy
    assert model.component.family is toy and vae.component.family is toy

    executor = Executor(registry, env)
    toy_run = executor.run(txt2img("toy.safetensors", seed=4, prefix="toy"))
    sd1_run = executor.run(txt2img(TINY, seed=4, prefix="sd1"))
    assert toy_run.status == sd1_run.status == "success", toy_run.error
    (toy_pixels,), (sd1_pixels,) = output_pixels(env, toy_run), output_pixels(env, sd1_run)
    assert toy_pixels.shape == (64, 64, 3) and np.array_equal(toy_pixels, sd1_pixels)
    assert toy_pixels.std() > 0


def test_an_unknown_file_lists_the_installed_families(toy_installed: Path, tmp_path: Path) -> None:
    """The error for a file nobody reads names every installed family, the plugin's too, and what the file holds."""
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(UnknownCheckpoint, match=r"SD3, Toy\).*something \(1 tensors\)"):
        families.inspect_checkpoint(path)


def test_a_second_family_with_a_taken_name_is_refused() -> None:
    class Again(families.BaseFamily):
        name = "sd1"
        label = "another SD1"

    with pytest.raises(ValueError, match="already registered"):
        families.register(Again())
