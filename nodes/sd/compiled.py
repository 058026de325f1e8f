"""Compiled denoisers: the UNet/MMDiT compiled by inductor, the compiled code kept under the base directory.

Why a separate object and not `module.compile()`: the loaded module lives in the model manager and is shared by every
workflow that uses the checkpoint; compiling it in place would change what eager workflows run. Instead each loaded
module carries (in its `__dict__`, so it is dropped with the module when the manager lets it go) one `CompiledNet`
per `CompileOptions`, and each use of the model gets a `BoundNet`: a thin callable that sends `__call__` through the
compiled code for the weights the model has in that use (its file, dtype, LoRAs and hooks) and everything else
(`device`, `config`, `parameters()`, `state_dict()`) to the module itself. It is not an `nn.Module`, so the
block-level interrupt hooks (nodes/sd/interrupt_hooks.py) are not put on it: a compiled run stops between steps.

Two ways of compiling, chosen by device:

- **CPU: ahead of time.** The first call of each input signature (shapes, dtypes, which keyword inputs) exports the
  network (`torch.export`), compiles it frozen with AOTInductor into a shared library and unpacks it under
  `<base>/cache/compile/<architecture>-<dtype>-<device>-torch<version>-<backend>/packages/`, named by a hash of the
  weights' name and the signature. Frozen (`torch._inductor.config.freezing`): the weights are constants of the
  library, so inductor folds the per-call work on them and pre-packs every convolution and linear weight into
  oneDNN/MKL's blocked formats, without inductor's layout optimisation (which only added weight copies). A later
  process, or a second worker, loads the library and calls it: no tracing, no compiling. Measured on the full-size
  SD1.5 UNet (fp32, 256x256, batch-2 CFG call, 1 thread; bench/RESULTS.md, issue 20): a step 0.73-0.77x eager's; the
  first compile about 5 minutes; the first prompt after a restart 1.02x an eager one (the library, 3.5 GB of packed
  weights, loads in 10-15 s), where the just-in-time path (`torch.compile`, kept for CUDA) traced and froze the graph
  again in every process (1.35x). Sizes are static: each new size is a new library, compiled once per machine. Costs:
  the packed weights live beside the module's own (the module is shared with eager workflows and keeps its weights),
  and on disk once per weights and size (the folder can be deleted at any time). Because the weights are baked in, the
  library is keyed by them: a LoRA applied to the shared module (nodes/sd/lora.py patches it in place for the run)
  gets a library of its own instead of running the base weights.
- **CUDA (and the cudagraphs backend): just in time.** `torch.compile` with torch's defaults (no freezing: weights are
  read at every call, so in-place LoRA patches are seen), inductor's FX-graph and AOT-autograd caches pointed, for
  the duration of each call only, at the same folder, so a restart reuses the compiled kernels. `dynamic=None` is
  torch's automatic mode (the first size is compiled static, the first size change recompiles once with symbolic
  height and width); attention is diffusers' SDPA processor (flash / memory-efficient kernels). Nothing here was
  measured on a GPU (none was lent), so the settings stay torch's defaults.

A compile failure (no C++ compiler, an operation export or inductor cannot take, a backend that needs CUDA) falls back
to the eager module with one warning, and that net stays eager; an error the eager module raises too is the input's,
and is raised as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.interrupt import Interrupted
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "cudagraphs")
CACHE_FOLDER = Path("cache") / "compile"
PACKAGE_FOLDER = "packages"
COMPILE_ENV = "LATENTGRAPH_COMPILE"
# Different instances of one architecture (two checkpoints, a reload after /free) each add a dynamo cache entry on
# the same forward code; torch's default of 8 would silently turn later ones eager.
RECOMPILE_LIMIT = 64
# Loaded libraries kept per module (each holds a packed copy of the weights): a LoRA'd and a plain run, or two sizes.
KEPT_LIBRARIES = 2
PROGRESS_SECONDS = 15.0  # how often a running compile says how long it has taken
_ATTRIBUTE = "_latentgraph_compiled"
_GIVEN = object()  # where a compiled library's call takes a tensor input


@dataclass(frozen=True)
class CompileOptions:
    """How a MODEL's denoiser is compiled; part of the MODEL handle, so it is part of every cache key downstream."""

    backend: str = "inductor"
    dynamic: bool | None = None  # just-in-time path only (CUDA); None: torch's automatic dynamic shapes

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"compile backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")


class CompileDefaults:
    """The environment's default for MODELs that no TorchCompileModel node set (`--compile` on serve and run)."""

    def __init__(self, options: CompileOptions | None = None) -> None:
        self.options = options


def options_from_environment() -> CompileOptions | None:
    """`LATENTGRAPH_COMPILE` (a backend name, or 1/on for inductor; set by `--compile`, inherited by worker
    processes), else None. An unknown name raises, naming the backends."""
    backend = os.environ.get(COMPILE_ENV, "").strip().lower()
    if backend in ("", "0", "off", "no", "false", "eager"):
        return None
    return CompileOptions(backend="inductor" if backend in ("1", "on", "yes", "true") else backend)


def compile_defaults(env: Environment) -> CompileDefaults:
    return env.service(CompileDefaults, lambda _env: CompileDefaults(options_from_environment()))


def set_default_compile(env: Environment, options: CompileOptions | None) -> None:
    """Makes every MODEL of `env` compiled with `options` unless a node says otherwise (None: eager)."""
    compile_defaults(env).options = options


def architecture_key(module: torch.nn.Module) -> str:
    """Class name and a hash of its config: two checkpoints of one architecture share compiled kernels."""
    config = dict(getattr(module, "config", None) or {})
    # diffusers' private entries (`_use_default_values`, a list in set order) differ from one process to the next
    text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str)
    return f"{type(module).__name__}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cache_dir(base_dir: Path, module: torch.nn.Module, options: CompileOptions) -> Path:
    """Where this module's compiled code is kept: keyed by architecture, dtype, device, torch, backend."""
    parameter = next(module.parameters())
    dtype = str(parameter.dtype).removeprefix("torch.")
    torch_version = torch.__version__.replace("+", "_")
    name = f"{architecture_key(module)}-{dtype}-{parameter.device.type}-torch{torch_version}-{options.backend}"
    return Path(base_dir) / CACHE_FOLDER / name


def inductor_settings(device: torch.device) -> dict[str, Any]:
    """Inductor's configuration for a denoiser on `device` (why frozen on CPU only: see the module doc)."""
    if device.type == "cpu":
        return {"fx_graph_cache": True, "freezing": True, "layout_optimization": False}
    return {"fx_graph_cache": True}


@contextmanager
def compile_scope(directory: Path, device: torch.device) -> Iterator[None]:
    """Inductor's caches in `directory`, its settings for `device` and a recompile limit fit for many models, for
    this block only."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    directory.mkdir(parents=True, exist_ok=True)
    with (temporary_cache_dir(str(directory)), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
          torch._inductor.config.patch(inductor_settings(device))):
        yield


@dataclass(frozen=True)
class DenoiserOutput:
    """What a compiled call returns: the network's output as `.sample`, like diffusers' output classes."""

    sample: torch.Tensor


class _FlatCall(torch.nn.Module):
    """The network called with one call's tensors as positional inputs (what a compiled library takes); the call's
    other values (None, flags, the keyword structure) are fixed in the export, and part of the library's name."""

    def __init__(self, module: torch.nn.Module, spec: Any, leaves: list[Any]) -> None:
        super().__init__()
        self.net = module
        self.spec = spec
        self.fixed = [_GIVEN if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = iter(tensors)
        args, kwargs = tree_unflatten([next(given) if v is _GIVEN else v for v in self.fixed], self.spec)
        return self.net(*args, **kwargs).sample


def library_name(weights: str, spec: Any, leaves: list[Any]) -> str:
    """Names a compiled library by the weights it holds and the call it takes (tensor shapes, dtypes, devices and
    every other value of the call)."""
    described = [("tensor", tuple(x.shape), str(x.dtype), x.device.type) if isinstance(x, torch.Tensor) else repr(x)
                 for x in leaves]
    return hashlib.sha256(repr((weights, str(spec), described)).encode()).hexdigest()[:24]


class CompiledNet:
    """A module's compiled code for one `CompileOptions`, shared by every use of the module (see the module doc)."""

    def __init__(self, module: torch.nn.Module, options: CompileOptions, directory: Path) -> None:
        self.module = module
        self.options = options
        self.directory = directory
        self.failed = False
        self.calls = 0
        self.device = next(module.parameters()).device
        self.ahead_of_time = options.backend == "inductor" and self.device.type == "cpu"
        self._libraries: OrderedDict[str, Any] = OrderedDict()
        self._compiled = None if self.ahead_of_time else torch.compile(module, backend=options.backend,
                                                                         dynamic=options.dynamic)

    def bound(self, weights: str) -> BoundNet:
        return BoundNet(self, weights)

    def run(self, weights: str, args: tuple, kwargs: dict[str, Any], check: Callable[[], None] | None = None) -> Any:
        """The compiled call; `check` (which raises Interrupted to stop) is called while a compile is waited for."""
        if self.failed:
            return self.module(*args, **kwargs)
        self.calls += 1
        try:
            if self.ahead_of_time:
                leaves, spec = tree_flatten((args, kwargs))
                library = self._library(library_name(weights, spec, leaves), spec, leaves, check)
                return DenoiserOutput(library.run([x for x in leaves if isinstance(x, torch.Tensor)])[0])
            return self._run_just_in_time(args, kwargs)
        except Interrupted:
            raise
        except Exception as error:  # noqa: BLE001 - any compile failure falls back; eager decides below
            return self._fall_back(error, args, kwargs)

    def _run_just_in_time(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        if self.calls == 1:
            log.info("compiling %s with %s (cached under %s; the first call of each new size takes a while)",
                     type(self.module).__name__, self.options.backend, self.directory)
        with compile_scope(self.directory, self.device):
            if self.options.backend == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()
                result = _cloned(self._compiled(*args, **kwargs))
            else:
                result = self._compiled(*args, **kwargs)
        if self.calls == 1:
            log.info("%s compiled in %.1f s", type(self.module).__name__, time.perf_counter() - start)
        return result

    def _library(self, name: str, spec: Any, leaves: list[Any], check: Callable[[], None] | None) -> Any:
        """The loaded library `name`: kept from an earlier call, else loaded from the cache, else compiled now."""
        if name in self._libraries:
            self._libraries.move_to_end(name)
            return self._libraries[name]
        folder = self.directory / PACKAGE_FOLDER / name
        if not folder.is_dir():
            self._compile_library(folder, spec, leaves, check)
        start = time.perf_counter()
        library = torch._C._aoti.AOTIModelContainerRunnerCpu(str(_shared_library(folder)), 1)
        log.info("loaded compiled %s from %s in %.1f s", type(self.module).__name__, folder,
                 time.perf_counter() - start)
        self._libraries[name] = library
        while len(self._libraries) > KEPT_LIBRARIES:
            self._libraries.popitem(last=False)
        return library

    def _compile_library(self, folder: Path, spec: Any, leaves: list[Any], check: Callable[[], None] | None) -> None:
        """Exports the network for this call here (seconds), then compiles it in a child process (minutes), which
        an interrupt stops at once; the library is unpacked into `folder` (so a load maps it directly), written
        aside and renamed, so a concurrent worker never sees half a library. The exported program carries the
        weights as they are now, so a LoRA taken off the shared module while the child compiles does not leak in."""
        name = type(self.module).__name__
        log.info("compiling %s ahead of time for this call's sizes (once per machine: minutes for a full-size "
                 "network on a CPU; kept in %s)", name, folder)
        start = time.perf_counter()
        tensors = tuple(x for x in leaves if isinstance(x, torch.Tensor))
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)  # left by a process of the same id that was killed
        partial.mkdir()
        try:
            with torch.no_grad(), torch._inductor.config.patch(inductor_settings(self.device)):
                program = torch.export.export(_FlatCall(self.module, spec, leaves), tensors, strict=False)
                torch.export.save(program, partial / "exported.pt2")
                (partial / "inductor.config").write_bytes(torch._inductor.config.save_config())
            del program
            self._wait_for_child(partial, name, start, check)
            with zipfile.ZipFile(partial / "library.pt2") as packed:
                packed.extractall(partial / "library")
            try:
                (partial / "library").rename(folder)
            except OSError:  # another worker finished first: its library is the same
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("%s compiled in %.1f s", name, time.perf_counter() - start)

    def _wait_for_child(self, partial: Path, name: str, start: float, check: Callable[[], None] | None) -> None:
        """Runs `python -m latentgraph.nodes.sd.compiled PARTIAL` (inductor's caches under this net's folder, this
        process's thread count), saying every PROGRESS_SECONDS how long it has taken, killing it (and the C++
        compilers it started) when `check` raises."""
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(self.directory),
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        with open(partial / "child.log", "wb") as output:
            child = subprocess.Popen([sys.executable, "-m", __name__, str(partial)], stdout=output,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        said_at = start
        try:
            while child.poll() is None:
                try:
                    child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if check is not None:
                        check()
                    if time.perf_counter() - said_at >= PROGRESS_SECONDS:
                        said_at = time.perf_counter()
                        log.info("compiling %s: %.0f s so far", name, said_at - start)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                log.info("compiling %s stopped (interrupted after %.0f s)", name, time.perf_counter() - start)
        if child.returncode != 0:
            said = (partial / "child.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the compiler process exited with {child.returncode}: "
                               f"{said[-1] if said else 'no output'}")

    def _fall_back(self, error: Exception, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Eager for good when eager succeeds where the compiled call failed; the input's error otherwise."""
        result = self.module(*args, **kwargs)
        self.failed = True
        reason = str(error).strip().splitlines()
        log.warning("torch.compile (%s) failed for %s; running it eager from now on: %s: %s", self.options.backend,
                    type(self.module).__name__, type(error).__name__, reason[0] if reason else "")
        return result


def _shared_library(folder: Path) -> Path:
    found = sorted(folder.rglob("*.so"))
    if len(found) != 1:
        raise RuntimeError(f"expected one compiled library in {folder}, found {len(found)}: delete the folder")
    return found[0]


@dataclass(frozen=True)
class BoundNet:
    """The network as one use of the model sees it: calls compiled for `weights`, attributes the module's; `check`
    is the run's interrupt check, called while a compile is waited for."""

    net: CompiledNet
    weights: str
    check: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.net.run(self.weights, args, kwargs, self.check)

    def with_interrupt(self, check: Callable[[], None]) -> BoundNet:
        return replace(self, check=check)


def _cloned(value: Any) -> Any:
    """CUDA graphs reuse their output buffers on the next replay: the sampling loop keeps outputs across calls."""
    from torch.utils._pytree import tree_map

    if hasattr(value, "to_tuple"):  # a diffusers output dataclass
        return type(value)(*tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value.to_tuple()))
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value)


def compiled(module: torch.nn.Module, options: CompileOptions, base_dir: Path) -> CompiledNet:
    """The module's compiled net for `options`, made once and kept with the module (shared, dropped with it)."""
    nets: dict[CompileOptions, CompiledNet] = module.__dict__.setdefault(_ATTRIBUTE, {})
    net = nets.get(options)
    if net is None:
        net = nets[options] = CompiledNet(module, options, cache_dir(base_dir, module, options))
    return net


def maybe_compiled(module: torch.nn.Module, options: CompileOptions | None, env: Environment, weights: str) -> Any:
    """What a MODEL handle lends to the sampling loop: the compiled net for the module's current `weights` (a name
    for them: file content, dtype, patches) when the handle or the environment asks, else the module."""
    chosen = options if options is not None else compile_defaults(env).options
    return module if chosen is None else compiled(module, chosen, env.base_dir).bound(weights)


def _compile_exported(partial: Path) -> None:
    """The child process's work: the exported program in `partial`, compiled with the parent's inductor settings into
    `partial/library.pt2`."""
    torch._inductor.config.load_config((partial / "inductor.config").read_bytes())
    program = torch.export.load(partial / "exported.pt2")
    with torch.no_grad():  # freezing applies to inference only
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial / "library.pt2"))


if __name__ == "__main__":
    _compile_exported(Path(sys.argv[1]))
