"""Three checkpoints under a budget for two: the least recently used is offloaded, and all three still work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.services import model_manager
from latentgraph.nodes.sd.tiny import write_tiny_checkpoint

from .sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")


def test_third_checkpoint_offloads_the_least_recently_used(registry, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "checkpoints"
    names = [write_tiny_checkpoint(folder / f"m{seed}.safetensors", seed=seed).name for seed in range(3)]
    env = make_environment(tmp_path)
    executor = Executor(registry, env)
    first = executor.run(txt2img(names[0], seed=3, prefix="m0"))
    one_checkpoint = model_manager(env).stats()["ram_bytes"]
    model_manager(env).ram_budget = 2 * one_checkpoint

    images = {names[0]: output_pixels(env, first)[0]}
    for name in names[1:]:
        images[name] = output_pixels(env, executor.run(txt2img(name, seed=3, prefix=name)))[0]
    manager = model_manager(env)
    assert manager.offloads > 0
    assert not any(key.startswith(str(folder / names[0])) for key in manager.keys())
    assert sum(1 for key in manager.keys() if "#unet#" in key) == 2

    executor.free(models=False)
    again = output_pixels(env, executor.run(txt2img(names[0], seed=3, prefix="again")))[0]
    assert np.array_equal(again, images[names[0]])
    assert len({img.tobytes() for img in images.values()}) == 3


def test_the_same_checkpoint_in_two_workflows_loads_once(registry, tiny_file: Path, tmp_path: Path) -> None:
    from .conftest import TINY, with_checkpoint

    env = make_environment(with_checkpoint(tmp_path, tiny_file))
    executor = Executor(registry, env)
    executor.run(txt2img(TINY, positive="a cat"))
    executor.cache.clear()
    executor.run(txt2img(TINY, positive="a dog", steps=2))
    assert model_manager(env).loads == 3
