"""The result cache: byte accounting, LRU order, eviction under a budget, and what its keys must tell apart.

Every size here is computed independently of `estimate_bytes` (from the tensor's storage, numpy's itemsize, the
image's mode), so a cache that stops counting, counts twice or forgets to subtract fails. The LRU tests are
arranged so that evicting the most recent entry, or not refreshing an entry on `get()`, evicts the wrong one.
The key tests run real workflows where a key without the output index or the node VERSION would serve a stale
result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentgraph.engine.cache import Cache, cache_key, estimate_bytes
from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.engine.node import Input, Node
from latentgraph.engine.registry import Registry
from PIL import Image

from tests.engine.cheap_nodes import Number, cheap_registry

# Structure overhead per container, and the size of None (a UI-less node's `ui`): the estimate's fixed costs.
OVERHEAD = 64


def storage_bytes(tensor: torch.Tensor) -> int:
    """What a contiguous tensor holds, read from its storage rather than from its shape."""
    return tensor.untyped_storage().nbytes()


def entry_bytes(*tensors: torch.Tensor) -> int:
    """An entry `(t1, t2, ...)` with ui None: the tuple, the tensors' storage, and None."""
    return OVERHEAD + sum(storage_bytes(t) for t in tensors) + OVERHEAD


# --- estimate_bytes against independent sizes -------------------------------------------------------------------


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (3, 5)), (torch.float16, (7,)), (torch.uint8, (2, 3, 4)),
                                         (torch.float64, (1, 4, 8, 8)), (torch.bfloat16, (9, 9))])
def test_a_tensor_counts_its_storage(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = torch.zeros(shape, dtype=dtype)
    assert estimate_bytes(tensor) == storage_bytes(tensor)
    assert estimate_bytes(tensor) == int(np.prod(shape)) * {torch.float32: 4, torch.float16: 2, torch.uint8: 1,
                                                            torch.float64: 8, torch.bfloat16: 2}[dtype]


def test_arrays_images_and_objects_by_their_own_measures() -> None:
    array = np.zeros((4, 6), dtype=np.int64)
    assert estimate_bytes(array) == 4 * 6 * 8
    assert estimate_bytes(Image.new("RGB", (5, 3))) == 5 * 3 * 3
    assert estimate_bytes(Image.new("L", (5, 3))) == 5 * 3
    assert estimate_bytes(Image.new("RGBA", (2, 2))) == 2 * 2 * 4

    class Handle:
        def cache_bytes(self) -> int:
            return 12345

    assert estimate_bytes(Handle()) == 12345

    class Sized(Handle):
        width = 10  # an image has a width, but a width alone does not make an image

    assert estimate_bytes(Sized()) == 12345
    assert estimate_bytes("abcd") == 4 and estimate_bytes(b"xyz") == 3


def test_containers_add_their_contents_and_count_a_shared_tensor_once() -> None:
    a, b = torch.zeros(100), torch.zeros(10, dtype=torch.float64)
    assert estimate_bytes({"x": a, "y": b}) == OVERHEAD + 400 + 80
    assert estimate_bytes((a, [b])) == OVERHEAD + 400 + OVERHEAD + 80
    assert estimate_bytes((a, a, {"again": a})) == OVERHEAD + 400 + OVERHEAD  # one buffer, held three times


# --- byte accounting -----------------------------------------------------------------------------------------------


def test_bytes_follow_puts_replacements_and_clear() -> None:
    cache = Cache(budget=1 << 20)
    t1, t2, t3 = torch.zeros(1000), torch.zeros(50, dtype=torch.float16), torch.zeros(3, 3, dtype=torch.float64)
    assert cache.put("a", (t1,), None)
    assert cache.bytes == entry_bytes(t1) == OVERHEAD + 4000 + OVERHEAD
    assert cache.put("b", (t2, t3), None)
    assert cache.bytes == entry_bytes(t1) + entry_bytes(t2, t3)
    assert cache.put("a", (t3,), None)  # replacing an entry frees the old one's bytes
    assert cache.bytes == entry_bytes(t3) + entry_bytes(t2, t3)
    assert len(cache) == 2 and cache.stats()["bytes"] == cache.bytes
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0 and cache.get("a") is None


def test_ui_counts_toward_the_entry() -> None:
    cache = Cache(budget=1 << 20)
    cache.put("k", (torch.zeros(10),), {"images": ["0123456789"]})
    assert cache.bytes == (OVERHEAD + 40) + (OVERHEAD + OVERHEAD + 10)


def test_hits_and_misses_are_counted() -> None:
    cache = Cache(budget=1 << 20)
    cache.put("k", (torch.zeros(1),), None)
    assert cache.get("k") is not None and cache.get("nope") is None and cache.get("k") is not None
    assert cache.get("other") is None
    assert (cache.hits, cache.misses) == (2, 2)
    assert "k" in cache and "nope" not in cache
    assert cache.stats() == {"entries": 1, "bytes": cache.bytes, "budget": 1 << 20, "hits": 2, "misses": 2}


# --- LRU order and eviction --------------------------------------------------------------------------------------


def three_entry_cache() -> tuple[Cache, dict[str, torch.Tensor]]:
    """A cache with room for exactly three 1000-float entries, holding a, b, c (put in that order)."""
    tensors = {name: torch.full((1000,), float(i)) for i, name in enumerate("abcd")}
    cache = Cache(budget=3 * entry_bytes(tensors["a"]))
    for name in "abc":
        assert cache.put(name, (tensors[name],), None)
    return cache, tensors


def test_the_least_recently_put_entry_is_evicted_first() -> None:
    cache, tensors = three_entry_cache()
    assert cache.bytes == cache.budget
    cache.put("d", (tensors["d"],), None)
    assert [k in cache for k in "abcd"] == [False, True, True, True]
    assert cache.bytes == cache.budget


def test_get_refreshes_an_entry() -> None:
    cache, tensors = three_entry_cache()
    assert cache.get("a") is not None  # a is now the most recent: b is the oldest
    cache.put("d", (tensors["d"],), None)
    assert [k in cache for k in "abcd"] == [True, False, True, True]
    assert torch.equal(cache.get("a").outputs[0], tensors["a"])
    cache.put("e", (tensors["d"].clone(),), None)  # after the get of a just above, c is the oldest
    assert [k in cache for k in "acde"] == [True, False, True, True]


def test_contains_does_not_refresh() -> None:
    cache, tensors = three_entry_cache()
    assert "a" in cache
    cache.put("d", (tensors["d"],), None)
    assert "a" not in cache


def test_a_large_entry_evicts_as_many_as_it_needs_and_no_more() -> None:
    cache, _ = three_entry_cache()
    big = torch.zeros(2000)  # needs the room of two 1000-float entries, less their shared overhead
    assert cache.put("big", (big,), None)
    assert [k in cache for k in ("a", "b", "c", "big")] == [False, False, True, True]
    assert cache.bytes == entry_bytes(torch.zeros(1000)) + entry_bytes(big) <= cache.budget


def test_an_entry_over_the_budget_is_refused_and_evicts_nothing() -> None:
    cache, _ = three_entry_cache()
    before = cache.bytes
    assert not cache.put("huge", (torch.zeros(4000),), None)
    assert "huge" not in cache and len(cache) == 3 and cache.bytes == before


def test_an_entry_exactly_the_budget_is_kept() -> None:
    tensor = torch.zeros(10)
    cache = Cache(budget=entry_bytes(tensor))
    assert cache.put("k", (tensor,), None) and cache.bytes == cache.budget


def test_a_zero_budget_keeps_nothing() -> None:
    cache = Cache(budget=0)
    assert not cache.put("k", (torch.zeros(1),), None)
    assert len(cache) == 0 and cache.bytes == 0


# --- the cache inside the executor, with real tensors ------------------------------------------------------------


def source(value: int, size: int = 64) -> dict:
    return {"s": {"class_type": "Source", "inputs": {"value": value, "size": size}},
            "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}


def test_executor_evicts_oldest_results_under_its_budget(tmp_path) -> None:
    """Each workflow caches a 64-float Source result and Show's UI; the budget holds two workflows' worth."""
    registry = cheap_registry()
    probe = Executor(registry, Environment(tmp_path / "probe"))
    probe.run(source(0))
    per_run = probe.cache.bytes
    expected_source = entry_bytes(torch.zeros(64))
    expected_show = OVERHEAD + OVERHEAD + OVERHEAD + OVERHEAD  # (), and a UI {"value": [float]}: dict, list, float
    assert per_run == expected_source + expected_show

    executor = Executor(registry, Environment(tmp_path / "run"), cache_bytes=2 * per_run)
    for value in (1, 2, 3):
        executor.run(source(value))
        assert executor.cache.bytes <= executor.cache.budget
    assert executor.cache.bytes == 2 * per_run and len(executor.cache) == 4
    assert executor.run(source(3)).cached == ["o"]  # the newest is kept (a cached output needs no ancestors)
    rerun = executor.run(source(1))  # the oldest was evicted: it runs again, with the right value
    assert rerun.executed == ["s", "o"] and rerun.outputs["o"] == {"value": [1.0]}


def test_a_result_used_by_a_later_run_survives_newer_ones(tmp_path) -> None:
    """Reading a result in a run refreshes it, so the executor's cache is LRU, not FIFO."""
    registry = cheap_registry()
    probe = Executor(registry, Environment(tmp_path / "probe"))
    probe.run(source(0))
    executor = Executor(registry, Environment(tmp_path / "run"), cache_bytes=2 * probe.cache.bytes)
    executor.run(source(1))
    executor.run(source(2))
    assert executor.run(source(1)).cached == ["o"]  # refreshes o1 (not s1); s2 is now the oldest
    executor.run(source(3))  # evicts s1 then s2; without the refresh it would have evicted s1 then o1
    assert executor.run(source(1)).cached == ["o"]


class Split(Node):
    """Two outputs from one input: a + 1 and a + 100."""

    RETURN_TYPES = ("NUMBER", "NUMBER")
    RETURN_NAMES = ("plus_one", "plus_hundred")
    a: Number

    def execute(self, ctx) -> tuple:
        return (self.a + 1, self.a + 100)


def split_workflow(first: int, second: int) -> dict:
    return {
        "s": {"class_type": "Source", "inputs": {"value": 5}},
        "p": {"class_type": "Split", "inputs": {"a": ["s", 0]}},
        "x": {"class_type": "Combine", "inputs": {"a": ["p", first], "k": 0}},
        "y": {"class_type": "Combine", "inputs": {"a": ["p", second], "k": 0}},
        "ox": {"class_type": "Show", "inputs": {"value": ["x", 0]}},
        "oy": {"class_type": "Show", "inputs": {"value": ["y", 0]}},
    }


def test_each_output_of_a_multi_output_node_reaches_its_own_consumer(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Split)
    executor = Executor(registry, Environment(tmp_path))
    result = executor.run(split_workflow(0, 1))
    assert result.outputs["ox"] == {"value": [12.0]} and result.outputs["oy"] == {"value": [210.0]}
    # The same consumers on the other outputs: their keys must differ by output index alone.
    swapped = executor.run(split_workflow(1, 0))
    assert swapped.outputs["ox"] == {"value": [210.0]} and swapped.outputs["oy"] == {"value": [12.0]}
    assert sorted(swapped.cached) == ["ox", "oy"]  # x is now the old y, and vice versa: both hits
    both = executor.run(split_workflow(1, 1))
    assert both.outputs["ox"] == both.outputs["oy"] == {"value": [210.0]}


def test_the_output_index_is_part_of_a_key() -> None:
    assert cache_key("C", 1, {}, None, {"a": ("parent", 0)}) != cache_key("C", 1, {}, None, {"a": ("parent", 1)})


def versioned(version: int, offset: int) -> type[Node]:
    """The same node name at another VERSION, computing something else (an upgrade that changed the result)."""

    class Scale(Node):
        RETURN_TYPES = ("NUMBER",)
        VERSION = version
        a: Number
        factor: int = Input(2)

        def execute(self, ctx) -> tuple:
            return (self.a * self.factor + offset,)

    return Scale


def scale_workflow() -> dict:
    return {"s": {"class_type": "Source", "inputs": {"value": 3}},
            "m": {"class_type": "Scale", "inputs": {"a": ["s", 0], "factor": 2}},
            "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}}


def registry_with(cls: type[Node]) -> Registry:
    registry = cheap_registry()
    registry.register(cls)
    return registry


def test_a_new_node_version_does_not_reuse_the_old_versions_results(tmp_path) -> None:
    executor = Executor(registry_with(versioned(1, 0)), Environment(tmp_path))
    assert executor.run(scale_workflow()).outputs["o"] == {"value": [6.0]}
    executor.registry = registry_with(versioned(2, 1000))  # the same cache, the node upgraded
    upgraded = executor.run(scale_workflow())
    assert upgraded.outputs["o"] == {"value": [1006.0]}
    assert upgraded.cached == ["s"] and upgraded.executed == ["m", "o"]
    executor.registry = registry_with(versioned(2, 1000))  # the same version again: a hit
    assert executor.run(scale_workflow()).cached == ["o"]


def test_a_key_does_not_depend_on_the_order_constants_were_given_in() -> None:
    assert cache_key("C", 1, {"a": 1, "b": {"x": 1, "y": 2}}, None, {}) == \
        cache_key("C", 1, {"b": {"y": 2, "x": 1}, "a": 1}, None, {})


def test_constants_that_json_cannot_write_still_key_by_value() -> None:
    """Values JSON has no form for (paths, say) are keyed by their repr, not refused."""
    from pathlib import PurePosixPath

    first = cache_key("C", 1, {"file": PurePosixPath("a.png")}, None, {})
    assert first == cache_key("C", 1, {"file": PurePosixPath("a.png")}, None, {})
    assert first != cache_key("C", 1, {"file": PurePosixPath("b.png")}, None, {})


def test_a_key_tells_apart_everything_it_is_made_of() -> None:
    base = cache_key("C", 1, {"k": 1}, "fp", {"a": ("p", 0), "b": ("q", 0)})
    assert base == cache_key("C", 1, {"k": 1}, "fp", {"b": ("q", 0), "a": ("p", 0)})  # not the dict's order
    others = [cache_key("D", 1, {"k": 1}, "fp", {"a": ("p", 0), "b": ("q", 0)}),
              cache_key("C", 2, {"k": 1}, "fp", {"a": ("p", 0), "b": ("q", 0)}),
              cache_key("C", 1, {"k": 2}, "fp", {"a": ("p", 0), "b": ("q", 0)}),
              cache_key("C", 1, {"k": 1}, "fp2", {"a": ("p", 0), "b": ("q", 0)}),
              cache_key("C", 1, {"k": 1}, None, {"a": ("p", 0), "b": ("q", 0)}),
              cache_key("C", 1, {"k": 1}, "fp", {"a": ("q", 0), "b": ("p", 0)}),
              cache_key("C", 1, {"k": 1}, "fp", {"a": ("p", 0)})]
    assert len({base, *others}) == len(others) + 1


class Double(Node):
    RETURN_TYPES = ("NUMBER",)
    a: Number

    def execute(self, ctx) -> tuple:
        return (self.a * 2,)


class Triple(Node):
    """The same inputs, VERSION and parents as Double: only the class tells their results apart."""

    RETURN_TYPES = ("NUMBER",)
    a: Number

    def execute(self, ctx) -> tuple:
        return (self.a * 3,)


def test_nodes_of_different_classes_with_the_same_inputs_do_not_share_results(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Double)
    registry.register(Triple)
    executor = Executor(registry, Environment(tmp_path))

    def run(class_type: str) -> dict:
        return executor.run({"s": {"class_type": "Source", "inputs": {"value": 5}},
                             "m": {"class_type": class_type, "inputs": {"a": ["s", 0]}},
                             "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}}).outputs["o"]

    assert run("Double") == {"value": [10.0]}
    assert run("Triple") == {"value": [15.0]}
