"""Compiled denoisers (TorchCompileModel, nodes/sd/compiled.py) on tiny SD1, SDXL and SD3 models.

On the CPU a denoiser is compiled ahead of time (torch.export + AOTInductor, frozen) into a library under the base
directory: each first compile of a tiny network takes a minute or more, so every test here is slow. What is checked:
compiled sampling gives eager's latents (and really ran compiled: a library was made and loaded, nothing fell back);
a second process on the same base directory compiles nothing (it loads the library: no export, no inductor work);
a library holds the weights as constants, so it is named by them (another checkpoint, a LoRA: another name), and
one model with and without a LoRA patched into its shared weights runs its own weights each time; a compile that fails
(a C++ compiler that does not exist) falls back to eager with one warning and gives exactly eager's latents; a
running compile reports its progress and an interrupt stops it, its processes and its files at once;
`latentgraph run --compile` compiles the sampler's UNet.
The tests share one SD1 base directory, so the later ones find its libraries there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from latentgraph.cli.main import main
from latentgraph.engine.interrupt import Interrupted
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd import compiled as compiled_module
from latentgraph.nodes.sd.compile_nodes import TorchCompileModel
from latentgraph.nodes.sd.compiled import COMPILE_ENV
from latentgraph.nodes.sd.families import checkpoint_handles, inspect_checkpoint
from latentgraph.nodes.sd.loader_nodes import LoraLoader
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.sdxl import save_sdxl_single_file
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode
from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components, write_random_lora, write_tiny_checkpoint
from PIL import Image

from tests.nodes.sd.families_tiny import run_context, tiny_sd3, tiny_sdxl, write_t5_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[3]
SAMPLING = {"sd1": ("normal", 7.0), "sdxl": ("normal", 5.0), "sd3": ("simple", 4.5)}
# inductor fuses and reorders float32 arithmetic: a few elements move by ~1e-3 over two steps (measured 8.9e-4)
TOLERANCE = {"atol": 3e-3, "rtol": 1e-3}
COMPILED_LOGGER = "latentgraph.nodes.sd.compiled"


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


def latents(family: str, root: Path, path: Path, backend: str | None, lora: str | None = None) -> torch.Tensor:
    """2 Euler steps at 64x64 (an 8x8 latent) with CFG, eager (backend None) or through TorchCompileModel, with the
    LoRA file `lora` (under root/models/loras) at strength 1 if given."""
    env = make_environment(root)
    ctx = run_context(env)
    model, clip, _ = checkpoint_handles(inspect_checkpoint(path), env)
    if lora is not None:
        model, clip = LoraLoader(model=model, clip=clip, lora_name=lora).execute(ctx)
    if backend is not None:
        model = TorchCompileModel(model=model, backend=backend).execute(ctx)[0]
    positive = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    scheduler, cfg = SAMPLING[family]
    channels = model.family.latent_channels
    return sample(model, seed=3, steps=2, cfg=cfg, sampler_name="euler", scheduler_name=scheduler,
                  positive=positive, negative=negative,
                  latent={"samples": torch.zeros(1, channels, 8, 8)})["samples"]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level and r.name == COMPILED_LOGGER]


def loaded_libraries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(m.startswith("loaded compiled") for m in messages(caplog))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compile_sd1")
    return root, write_checkpoint("sd1", root)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_compiled_equals_eager(family: str, sd1: tuple[Path, Path], tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    root, path = sd1 if family == "sd1" else (tmp_path, write_checkpoint(family, tmp_path))
    eager = latents(family, root, path, None)
    with caplog.at_level(logging.INFO, logger=COMPILED_LOGGER):
        compiled = latents(family, root, path, "inductor")
    assert not messages(caplog, logging.WARNING), "the compiled run fell back to eager"
    assert loaded_libraries(caplog) == 1, messages(caplog)
    assert list((root / "cache" / "compile").glob("*/packages/*/**/*.so")), "no library under the base directory"
    if family == "sd1" and torch.backends.mkldnn.is_available():  # frozen: oneDNN on weights packed beforehand
        wrappers = list((root / "cache" / "compile").rglob("*.wrapper.cpp"))
        assert wrappers and all("mkldnn__convolution_pointwise" in w.read_text() for w in wrappers), wrappers
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    assert not torch.equal(eager, torch.zeros_like(eager))


RESTART = """
import json, logging, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(message)s")
from torch._dynamo.utils import counters
from tests.nodes.sd.test_compile import latents
out = latents("sd1", Path(sys.argv[1]), Path(sys.argv[2]), "inductor")
print("RESULT " + json.dumps({"inductor": dict(counters["inductor"]), "aot": dict(counters["aot_autograd"]),
                              "latents": out.flatten().tolist()}))
"""


def test_second_process_compiles_nothing(sd1: tuple[Path, Path]) -> None:
    """After test_compiled_equals_eager[sd1] (or this test's own first process) made the library, a new process
    loads it and compiles nothing: no export, no inductor work (its counters stay at zero), no compile message."""
    root, path = sd1

    def run() -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", RESTART, str(root), str(path)], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        logged = [line for line in done.stderr.splitlines() if line.startswith(f"LOG {COMPILED_LOGGER} ")]
        return {**result, "log": logged}

    if not (root / "cache" / "compile").exists():
        run()  # this test alone: a first process makes the library
    second = run()
    assert sum(line.count(" loaded compiled ") for line in second["log"]) == 1, second["log"]
    assert not [line for line in second["log"] if " compiling " in line or " failed " in line], second["log"]
    assert not any(second["inductor"].values()), second["inductor"]
    assert not any(second["aot"].values()), second["aot"]
    eager = latents("sd1", root, path, None)
    torch.testing.assert_close(torch.tensor(second["latents"]).reshape(eager.shape), eager, **TOLERANCE)


def test_a_library_is_named_by_the_weights_it_holds(sd1: tuple[Path, Path], tmp_path: Path) -> None:
    """On CPU the graph is frozen (the weights are its constants), so a library is found by the model's weights
    name: another checkpoint of the same architecture, or the same one with a LoRA, must get another name (and so
    compile its own library, as the LoRA test below shows end to end); the same checkpoint loaded again, the same."""
    root, path = sd1
    other = write_tiny_checkpoint(root / "models" / "checkpoints" / "sd1-other.safetensors", seed=1)
    parts = build_tiny_pipeline_components(seed=0)
    write_random_lora(root / "models" / "loras" / "named.safetensors", parts.unet, parts.text_encoder, seed=6)
    env = make_environment(root)

    def model(checkpoint: Path, lora: str | None = None) -> Any:
        handle, clip, _ = checkpoint_handles(inspect_checkpoint(checkpoint), env)
        if lora is not None:
            handle = LoraLoader(model=handle, clip=clip, lora_name=lora).execute(run_context(env))[0]
        return handle

    names = [model(path).weights_name, model(other).weights_name, model(path, "named.safetensors").weights_name]
    assert len(set(names)) == 3, names
    assert model(path).weights_name == names[0]


def test_lora_on_a_compiled_model_runs_the_patched_weights(sd1: tuple[Path, Path]) -> None:
    """A LoRA is added into the shared module's weights for the run (nodes/sd/lora.py); the compiled library holds
    weights as constants, so the LoRA'd run must get a library of its own, and the plain run after it the plain
    one: each equals its eager run, and the two differ."""
    root, path = sd1
    parts = build_tiny_pipeline_components(seed=0)
    # small factors: a LoRA that changes the latents clearly without making the tiny model chaotic (at the default
    # 0.5 the eager run itself moves by 4e-2 under float reordering)
    write_random_lora(root / "models" / "loras" / "random.safetensors", parts.unet, parts.text_encoder, seed=5,
                      scale=0.15)
    with_lora = latents("sd1", root, path, "inductor", lora="random.safetensors")
    plain = latents("sd1", root, path, "inductor")
    torch.testing.assert_close(with_lora, latents("sd1", root, path, None, lora="random.safetensors"), **TOLERANCE)
    torch.testing.assert_close(plain, latents("sd1", root, path, None), **TOLERANCE)
    assert not torch.allclose(with_lora, plain, **TOLERANCE), "the LoRA should change the latents"


def test_compile_failure_falls_back_to_eager(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A C++ compiler that does not exist makes inductor fail for real; the run goes on eager, warned once."""
    path = write_checkpoint("sd1", tmp_path)
    eager = latents("sd1", tmp_path, path, None)
    with (torch._inductor.config.patch({"cpp.cxx": (str(tmp_path / "no-such-compiler"),)}),
          caplog.at_level(logging.WARNING, logger=COMPILED_LOGGER)):
        fallen = latents("sd1", tmp_path, path, "inductor")
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "running it eager" in warnings[0], warnings
    assert torch.equal(fallen, eager)


def test_run_compile_option_compiles_the_denoiser(sd1: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
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
    with caplog.at_level(logging.INFO, logger=COMPILED_LOGGER):
        compiled = image("--compile")
    assert os.environ[COMPILE_ENV] == "inductor"
    assert loaded_libraries(caplog) == 1, "--compile did not send the denoiser through a compiled library"
    assert any((root / "cache" / "compile").glob("UNet2DConditionModel-*-float32-cpu-torch*-inductor/packages/*"))
    assert np.abs(compiled - eager).max() <= 2


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's processes that contain `text` (the compiler child and its C++ compilers)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


def test_interrupt_stops_a_running_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The first compile runs in a child process: it says how long it has taken while it runs, and an interrupt
    stops it at once: the interrupt reaches the caller, the child was killed (not waited for) and its compilers are
    gone, nothing is left in the cache, and the net is not marked as failed (the next call compiles again)."""
    monkeypatch.setattr(compiled_module, "PROGRESS_SECONDS", 1.0)
    children: list[subprocess.Popen] = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            children.append(self)

    monkeypatch.setattr(compiled_module.subprocess, "Popen", Recorded)
    unet = build_tiny_pipeline_components(seed=0).unet
    net = compiled_module.compiled(unet, compiled_module.CompileOptions(), tmp_path)
    checks = 0

    def check() -> None:
        nonlocal checks
        checks += 1
        if checks >= 12:  # about 6 s into the child's work
            raise Interrupted("stop")

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with (caplog.at_level(logging.INFO, logger=COMPILED_LOGGER), pytest.raises(Interrupted), torch.no_grad()):
        net.bound("tiny, seed 0").with_interrupt(check)(x, torch.tensor(500.0), encoder_hidden_states=context)
    assert checks == 12
    assert [child.returncode for child in children] == [-signal.SIGKILL], "the compiler process was not stopped"
    assert not processes_mentioning(str(tmp_path)), "the compiler process outlived the interrupt"
    assert not list((tmp_path / "cache" / "compile").glob("*/packages/*")), "an interrupted compile left files"
    assert not net.failed
    said = messages(caplog)
    assert any(m.endswith(" s so far") for m in said), said
    assert any("stopped (interrupted" in m for m in said), said
