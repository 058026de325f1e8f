"""Compiled denoisers (TorchCompileModel, nodes/sd/compiled.py) on tiny SD1, SDXL and SD3 models.

Inductor compiles C++ kernels on the CPU: each first compile of a tiny network takes a minute or more, so every test
here is slow. What is checked: compiled sampling gives eager's latents (and really ran compiled: inductor's counters
moved, nothing fell back); a second process on the same base directory compiles nothing (inductor's FX-graph cache:
hits, no miss and no bypass, although the CPU graphs are frozen with pre-packed oneDNN weights, which torch alone
would not cache; AOT autograd's cache: no miss, it bypasses frozen graphs); two checkpoints of one architecture
compiled in one process each run their own weights (a frozen graph holds them as constants); a compile that fails (a
C++ compiler that does not exist) falls back to eager with one warning and gives exactly eager's latents;
`latentgraph run --compile` compiles the sampler's UNet.
The tests share one SD1 base directory, so the later ones find its compile cache warm.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from latentgraph.cli.main import main
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.compile_nodes import TorchCompileModel
from latentgraph.nodes.sd.compiled import COMPILE_ENV
from latentgraph.nodes.sd.families import checkpoint_handles, inspect_checkpoint
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.sdxl import save_sdxl_single_file
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode
from latentgraph.nodes.sd.tiny import write_tiny_checkpoint
from PIL import Image
from torch._dynamo.utils import counters

from tests.nodes.sd.families_tiny import run_context, tiny_sd3, tiny_sdxl, write_t5_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[3]
SAMPLING = {"sd1": ("normal", 7.0), "sdxl": ("normal", 5.0), "sd3": ("simple", 4.5)}
# inductor fuses and reorders float32 arithmetic: a few elements move by ~1e-3 over two steps (measured 8.9e-4)
TOLERANCE = {"atol": 3e-3, "rtol": 1e-3}


def write_checkpoint(family: str, root: Path) -> Path:
    folder = root / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if family == "sd1":
        return write_tiny_checkpoint(folder / "sd1.safetensors", seed=0)
    if family == "sdxl":
        parts = tiny_sdxl()
        return save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                                     folder / "sdxl.safetensors")
    parts = tiny_sd3()
    write_t5_tokenizer(root / "models" / "text_encoders" / "t5_tokenizer")
    return save_sd3_single_file(parts["transformer"], parts["vae"],
                                {c: parts[c] for c in ("text_encoder", "text_encoder_2", "text_encoder_3")},
                                folder / "sd3.safetensors")


def latents(family: str, root: Path, path: Path, backend: str | None) -> torch.Tensor:
    """2 Euler steps at 64x64 (an 8x8 latent) with CFG, eager (backend None) or through TorchCompileModel."""
    env = make_environment(root)
    ctx = run_context(env)
    model, clip, _ = checkpoint_handles(inspect_checkpoint(path), env)
    if backend is not None:
        model = TorchCompileModel(model=model, backend=backend).execute(ctx)[0]
    positive = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    scheduler, cfg = SAMPLING[family]
    channels = model.family.latent_channels
    return sample(model, seed=3, steps=2, cfg=cfg, sampler_name="euler", scheduler_name=scheduler,
                  positive=positive, negative=negative,
                  latent={"samples": torch.zeros(1, channels, 8, 8)})["samples"]


def inductor_runs() -> int:
    """How many graphs inductor produced or took from its cache in this process."""
    c = counters["inductor"]
    return c["fxgraph_cache_miss"] + c["fxgraph_cache_hit"]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compile_sd1")
    return root, write_checkpoint("sd1", root)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_compiled_equals_eager(family: str, sd1: tuple[Path, Path], tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    root, path = sd1 if family == "sd1" else (tmp_path, write_checkpoint(family, tmp_path))
    eager = latents(family, root, path, None)
    before = inductor_runs()
    with caplog.at_level(logging.WARNING, logger="latentgraph.nodes.sd.compiled"):
        compiled = latents(family, root, path, "inductor")
    assert inductor_runs() > before, "the denoiser did not go through inductor"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "the compiled run fell back to eager"
    assert list((root / "cache" / "compile").iterdir()), "nothing was cached under the base directory"
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    assert not torch.equal(eager, torch.zeros_like(eager))


RESTART = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from torch._dynamo.utils import counters
from tests.nodes.sd.test_compile import latents
out = latents("sd1", Path(sys.argv[1]), Path(sys.argv[2]), "inductor")
print("RESULT " + json.dumps({"inductor": dict(counters["inductor"]), "aot": dict(counters["aot_autograd"]),
                              "latents": out.flatten().tolist()}))
"""


def test_second_process_compiles_nothing(sd1: tuple[Path, Path]) -> None:
    """After test_compiled_equals_eager[sd1] (or this test's own first process) filled the base directory's
    cache, a new process takes every compiled graph from it."""
    root, path = sd1

    def run() -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", RESTART, str(root), str(path)], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    if not (root / "cache" / "compile").exists():
        run()  # this test alone: a first process fills the cache
    second = run()
    assert second["inductor"].get("fxgraph_cache_hit", 0) >= 1, second["inductor"]
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0, second["inductor"]
    assert second["inductor"].get("fxgraph_cache_bypass", 0) == 0, second["inductor"]
    assert second["aot"].get("autograd_cache_miss", 0) == 0, second["aot"]
    eager = latents("sd1", root, path, None)
    torch.testing.assert_close(torch.tensor(second["latents"]).reshape(eager.shape), eager, **TOLERANCE)


def test_two_checkpoints_of_one_architecture_keep_their_own_weights(sd1: tuple[Path, Path], tmp_path: Path) -> None:
    """On CPU the graph is frozen (the weights are its constants, conv/linear weights pre-packed): a second
    checkpoint of the same architecture, compiled in the same process on the same compile cache, must run its own
    weights, not the first one's."""
    root, path = sd1
    other = write_tiny_checkpoint(tmp_path / "sd1-other.safetensors", seed=1)
    packed = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    first = latents("sd1", root, path, "inductor")
    second = latents("sd1", root, other, "inductor")
    if torch.backends.mkldnn.is_available():
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > packed, "the graph was not frozen"
    torch.testing.assert_close(first, latents("sd1", root, path, None), **TOLERANCE)
    torch.testing.assert_close(second, latents("sd1", root, other, None), **TOLERANCE)
    assert not torch.allclose(first, second, **TOLERANCE), "the two checkpoints should differ"


def test_compile_failure_falls_back_to_eager(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A C++ compiler that does not exist makes inductor fail for real; the run goes on eager, warned once."""
    path = write_checkpoint("sd1", tmp_path)
    eager = latents("sd1", tmp_path, path, None)
    torch._dynamo.reset()  # compiled code of earlier tests would be reused: this one must compile
    with (torch._inductor.config.patch({"cpp.cxx": (str(tmp_path / "no-such-compiler"),)}),
          caplog.at_level(logging.WARNING, logger="latentgraph.nodes.sd.compiled")):
        fallen = latents("sd1", tmp_path, path, "inductor")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "running it eager" in warnings[0], warnings
    assert torch.equal(fallen, eager)


def test_run_compile_option_compiles_the_denoiser(sd1: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`latentgraph run --compile` reaches the executor: the sampler's UNet went through inductor, its graphs are
    under the base directory's compile cache, and the PNG is eager's within a pixel level."""
    root, path = sd1
    monkeypatch.setenv(COMPILE_ENV, "eager")  # `--compile` sets it for the process; the fixture restores it
    command = ["run", str(REPO / "workflows" / "txt2img.json"), "--base-dir", str(root), "--quiet",
               "--set", f"4.ckpt_name={path.name}", "--set", "3.steps=2"]

    def image(*extra: str) -> np.ndarray:
        assert main([*command, *extra]) == 0, capsys.readouterr().err
        with Image.open(capsys.readouterr().out.strip()) as png:
            return np.asarray(png.convert("RGB"), dtype=np.int16)

    eager = image()
    before = inductor_runs()
    compiled = image("--compile")
    assert os.environ[COMPILE_ENV] == "inductor"
    assert inductor_runs() > before, "--compile did not send the denoiser through inductor"
    assert any((root / "cache" / "compile").glob("UNet2DConditionModel-*-float32-cpu-torch*-inductor/*"))
    assert np.abs(compiled - eager).max() <= 2
