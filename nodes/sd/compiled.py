"""Compiled denoisers: the UNet/MMDiT run through `torch.compile`, with inductor's caches kept under the base directory.

Why a separate object and not `module.compile()`: the loaded module lives in the model manager and is shared by every
workflow that uses the checkpoint; compiling it in place would change what eager workflows run. Instead each loaded
module carries (in its `__dict__`, so it is dropped with the module when the manager lets it go) one `CompiledNet`
per `CompileOptions`: a thin callable that sends `__call__` through the compiled module and everything else
(`device`, `config`, `parameters()`, `state_dict()`) to the module itself. It is not an `nn.Module`, so the block-level
interrupt hooks (nodes/sd/interrupt_hooks.py) are not put on it: a Python call inside every block would split the
compiled graph; a compiled run stops between steps.

Compilation is paid once per machine, not per process: inductor's FX-graph and AOT-autograd caches are pointed, for
the duration of each call only (no process-wide setting is left changed), at
`<base>/cache/compile/<architecture>-<dtype>-<device>-torch<version>-<backend>`, so a restart or a second worker
finds the compiled kernels there (each entry is keyed by inductor on the input shapes too). Shapes: `dynamic=None`
is torch's automatic mode (the first size is compiled static, the first size change recompiles once with symbolic
height and width, later sizes reuse that), except on CPU, where None means static: the frozen graph (below) with
symbolic sizes stepped 1.22x slower than eager at 320x320, a static one 0.79x, and a static compile of a new size
took 90 s against the symbolic recompile's 207 s (bench/RESULTS.md, issue 20); `dynamic=True` compiles symbolic
sizes from the start; `dynamic=False` compiles every size separately. Attention is diffusers' SDPA processor (flash
/ memory-efficient kernels on CUDA).

CPU inference is compiled *frozen* (`torch._inductor.config.freezing`; it applies only under no_grad, which the
sampling loop runs in): the weights become constants of the graph, so inductor folds the per-call work on them and
pre-packs every convolution and linear weight once into oneDNN/MKL's blocked formats; and without inductor's layout
optimisation, which would make the convolutions channels-last inside the graph: unfrozen, that converted every
weight (GBs) on every call; frozen, it only adds weight copies to fold at every start. Measured on the full-size
SD1.5 UNet (fp32, 256x256, batch-2 CFG call, 1 thread; bench/RESULTS.md, issue 20): torch's defaults made the
compiled step 1.35x slower than eager; layout optimisation off, 0.93x; frozen, 0.73-0.76x, but a first prompt after
a restart (8 steps) took 1.97x eager's; frozen without layout optimisation 0.71-0.74x and 1.35x. Costs: a second,
packed copy of the conv and linear weights lives beside the module's own (the module is shared with eager workflows
and keeps its weights), and each loaded module gets its own graph (dynamo guards a frozen graph on the identity of
the parameters, so two checkpoints of one architecture never share weights). Torch does not cache frozen graphs that
hold oneDNN (mkldnn) tensors in its FX-graph cache (it cannot pickle them), which would make every restart compile
again (~100 s on the full UNet even with the C++ kernels cached); but a frozen graph's constants are never pickled,
the cache takes them from the current module when it loads the graph, so `_frozen_mkldnn_cacheable` lets them
through, keyed by dtype and shape (as torch keys every other frozen parameter). The AOT-autograd cache refuses
frozen graphs outright, so a restart still traces and freezes the graph again before its FX-graph cache hit (about
30-40 s per process on the full UNet; 20-25 s unfrozen). On CUDA nothing was measured (no GPU here), so the settings
stay torch's defaults there: no freezing, no pre-packing, layout optimisation on.

A compile failure (no C++ compiler, an unsupported operation, a backend that needs CUDA) falls back to the eager
module with one warning, and that net stays eager; an error the eager module raises too is the input's, and is
raised as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "cudagraphs")
CACHE_FOLDER = Path("cache") / "compile"
COMPILE_ENV = "LATENTGRAPH_COMPILE"
# Different instances of one architecture (two checkpoints, a reload after /free) each add a dynamo cache entry on
# the same forward code; torch's default of 8 would silently turn later ones eager.
RECOMPILE_LIMIT = 64
_ATTRIBUTE = "_latentgraph_compiled"


@dataclass(frozen=True)
class CompileOptions:
    """How a MODEL's denoiser is compiled; part of the MODEL handle, so it is part of every cache key downstream."""

    backend: str = "inductor"
    dynamic: bool | None = None  # None: torch's automatic dynamic shapes on CUDA, static on CPU (module doc)

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
    """Where inductor keeps this module's compiled graphs: keyed by architecture, dtype, device, torch, backend."""
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
    settings = inductor_settings(device)
    with (temporary_cache_dir(str(directory)), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
          torch._inductor.config.patch(settings), _frozen_mkldnn_cacheable(settings.get("freezing", False))):
        yield


@contextmanager
def _frozen_mkldnn_cacheable(enabled: bool) -> Iterator[None]:
    """Lets inductor's FX-graph cache take frozen graphs with pre-packed oneDNN weights (why: the module doc).

    Torch refuses any mkldnn tensor it meets while hashing a graph, because it could not pickle one; a frozen
    parameter is never pickled (the cache entry keeps its name and a hit reads it from the current graph module), so
    only those are let through, and keyed by dtype and shape instead of their values, as torch keys other frozen
    parameters. Everything else goes through torch's own code.
    """
    tools = _torch_cache_functions() if enabled else None
    if tools is None:
        yield
        return
    from unittest import mock

    codecache, is_frozen_param, check_tensor, reduce_tensor = tools

    def checked(t: torch.Tensor) -> None:
        if not (t.is_mkldnn and is_frozen_param(t)):
            check_tensor(t)

    def reduced(self: Any, t: torch.Tensor) -> tuple[Any, ...]:
        if t.is_mkldnn and is_frozen_param(t):
            return (codecache._ident, (("frozen-mkldnn", str(t.dtype), tuple(t.shape)),))
        return reduce_tensor(self, t)

    with (mock.patch.object(codecache.CacheabilityValidator, "check_tensor", staticmethod(checked)),
          mock.patch.object(codecache.FxGraphCachePickler, "_reduce_tensor", reduced)):
        yield


@functools.cache
def _torch_cache_functions() -> tuple[Any, Any, Any, Any] | None:
    """The private torch functions `_frozen_mkldnn_cacheable` wraps (as in torch 2.13), or None (said once) on a torch
    without them: frozen graphs stay right there, only compiled again in each process."""
    try:
        from torch._inductor import codecache
        from torch._inductor.freezing_utils import is_frozen_param

        check_tensor = codecache.CacheabilityValidator.check_tensor
        reduce_tensor = codecache.FxGraphCachePickler._reduce_tensor
    except (ImportError, AttributeError):
        log.info("this torch's FX-graph cache keeps no frozen oneDNN graphs: each new process compiles again")
        return None
    return codecache, is_frozen_param, check_tensor, reduce_tensor


class CompiledNet:
    """The network as the sampling loop sees it: calls compiled, attributes the module's (see the module doc)."""

    def __init__(self, module: torch.nn.Module, options: CompileOptions, directory: Path) -> None:
        self.module = module
        self.options = options
        self.directory = directory
        self.failed = False
        self.calls = 0
        self.device = next(module.parameters()).device
        dynamic = options.dynamic
        if dynamic is None and self.device.type == "cpu":
            dynamic = False  # frozen CPU graphs with symbolic sizes were slower than eager (module doc)
        self._compiled = torch.compile(module, backend=options.backend, dynamic=dynamic)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.module(*args, **kwargs)
        self.calls += 1
        start = time.perf_counter()
        if self.calls == 1:
            log.info("compiling %s with %s (cached under %s; the first call of each new size takes a while)",
                     type(self.module).__name__, self.options.backend, self.directory)
        try:
            with compile_scope(self.directory, self.device):
                if self.options.backend == "cudagraphs":
                    torch.compiler.cudagraph_mark_step_begin()
                    return _cloned(self._compiled(*args, **kwargs))
                result = self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compile failure falls back; eager decides below
            return self._fall_back(error, args, kwargs)
        if self.calls == 1:
            log.info("%s compiled in %.1f s", type(self.module).__name__, time.perf_counter() - start)
        return result

    def _fall_back(self, error: Exception, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Eager for good when eager succeeds where the compiled call failed; the input's error otherwise."""
        result = self.module(*args, **kwargs)
        self.failed = True
        reason = str(error).strip().splitlines()
        log.warning("torch.compile (%s) failed for %s; running it eager from now on: %s: %s", self.options.backend,
                    type(self.module).__name__, type(error).__name__, reason[0] if reason else "")
        return result


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


def maybe_compiled(module: torch.nn.Module, options: CompileOptions | None, env: Environment) -> Any:
    """What a MODEL handle lends to the sampling loop: the compiled net when the handle or the environment asks."""
    chosen = options if options is not None else compile_defaults(env).options
    return module if chosen is None else compiled(module, chosen, env.base_dir)
