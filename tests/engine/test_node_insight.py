"""Why a node re-ran, what it cost, and what a run will take: the executor's own account, on cheap nodes.

A txt2img-shaped graph of stand-ins (a loader with a file fingerprint, a text encoder, a seeded sampler, a decoder,
a saver) lets each reason be provoked the way a user provokes it: a new seed, a new prompt, another checkpoint,
the same checkpoint file rewritten, and an eviction under a small cache budget.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Annotated, Any

import pytest
import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import REASON_EVENT, Executor
from latentgraph.engine.insight import Timing, expected_time, input_shapes
from latentgraph.engine.node import Input, Node, NodeOutput
from latentgraph.engine.registry import Registry
from latentgraph.engine.types import Socket

from tests.engine.cheap_nodes import Fail, Random, Show

Tensor = Annotated[Any, Socket("NUMBER")]  # the cheap nodes' type, so Show and Fail connect


class Loader(Node):
    """Reads a 'checkpoint' file from the base directory; its content is the fingerprint, as real loaders do."""

    RETURN_TYPES = ("NUMBER",)
    ckpt_name: str = Input("a.ckpt")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return hashlib.sha256((env.base_dir / inputs["ckpt_name"]).read_bytes()).hexdigest()

    def execute(self, ctx: RunContext) -> tuple:
        data = (ctx.env.base_dir / self.ckpt_name).read_bytes()
        return (torch.tensor([float(len(data))]),)


class Encode(Node):
    RETURN_TYPES = ("NUMBER",)
    clip: Tensor
    text: str = Input("")

    def execute(self, ctx: RunContext) -> tuple:
        return (self.clip + len(self.text),)


class Empty(Node):
    RETURN_TYPES = ("NUMBER",)
    width: int = Input(8, ge=1, le=4096)
    height: int = Input(8, ge=1, le=4096)
    batch_size: int = Input(1, ge=1, le=64)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.zeros((self.batch_size, 4, self.height // 8, self.width // 8)),)


class Sampler(Node):
    RETURN_TYPES = ("NUMBER",)
    model: Tensor
    positive: Tensor
    latent: Tensor
    seed: int = Input(0, ge=0, le=2**32)
    steps: int = Input(2, ge=1, le=1000)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.latent + self.model[0] + self.positive[0] + self.seed,)


class Decode(Node):
    RETURN_TYPES = ("NUMBER",)
    samples: Tensor

    def execute(self, ctx: RunContext) -> tuple:
        return (self.samples * 2,)


class Save(Node):
    OUTPUT_NODE = True
    images: Tensor

    def execute(self, ctx: RunContext) -> NodeOutput:
        return NodeOutput(ui={"sum": [float(self.images.sum())]})


class Nap(Node):
    """Sleeps, so that its wall time has a known floor."""

    RETURN_TYPES = ("NUMBER",)
    ms: int = Input(30)

    def execute(self, ctx: RunContext) -> tuple:
        time.sleep(self.ms / 1000)
        return (torch.zeros(1),)


class Hog(Node):
    """Touches `mb` MiB of fresh memory and lets it go: a known peak that the node does not keep."""

    RETURN_TYPES = ("NUMBER",)
    mb: int = Input(64)

    def execute(self, ctx: RunContext) -> tuple:
        block = torch.ones(self.mb * 1024 * 1024 // 4, dtype=torch.float32)
        return (block[:1].clone(),)


def registry() -> Registry:
    reg = Registry()
    for cls in (Loader, Encode, Empty, Sampler, Decode, Save, Nap, Hog, Fail, Random, Show):
        reg.register(cls)
    return reg


def txt2img(seed: int = 1, text: str = "a cat", ckpt: str = "a.ckpt", steps: int = 2) -> dict[str, Any]:
    return {
        "4": {"class_type": "Loader", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "Empty", "inputs": {"width": 64, "height": 32, "batch_size": 1}},
        "6": {"class_type": "Encode", "inputs": {"clip": ["4", 0], "text": text}},
        "3": {"class_type": "Sampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "latent": ["5", 0],
                                                  "seed": seed, "steps": steps}},
        "8": {"class_type": "Decode", "inputs": {"samples": ["3", 0]}},
        "9": {"class_type": "Save", "inputs": {"images": ["8", 0]}},
    }


@pytest.fixture
def executor(tmp_path) -> Executor:
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    (tmp_path / "b.ckpt").write_bytes(b"other weights")
    return Executor(registry(), Environment(tmp_path))


def ran(result) -> dict[str, dict[str, Any]]:
    return {n: r["reason"] for n, r in result.nodes.items() if r["status"] == "ran"}


def test_first_run_says_new_and_an_unchanged_rerun_runs_nothing(executor):
    first = executor.run(txt2img())
    assert set(ran(first)) == {"3", "4", "5", "6", "8", "9"}
    assert all(reason["kind"] == "new" for reason in ran(first).values())
    again = executor.run(txt2img())
    assert again.executed == [] and ran(again) == {}
    assert {r["status"] for r in again.nodes.values()} == {"cached"}
    assert list(again.nodes) == ["9"]  # the saver's result is cached: nothing upstream is needed
    assert again.nodes["9"]["key"] == first.nodes["9"]["key"]


def test_a_new_seed_reruns_the_sampler_for_the_seed_and_its_descendants_for_their_parent(executor):
    executor.run(txt2img(seed=1))
    result = executor.run(txt2img(seed=2))
    reasons = ran(result)
    assert set(reasons) == {"3", "8", "9"}
    assert reasons["3"]["kind"] == "changed"
    assert reasons["3"]["changes"] == [{"type": "constant", "input": "seed", "old": 1, "new": 2,
                                        "text": "seed changed 1 -> 2"}]
    assert reasons["8"]["changes"] == [{"type": "parent_ran", "input": "samples", "node": "3",
                                        "text": "parent 3 re-ran (samples)"}]
    assert reasons["9"]["text"] == "parent 8 re-ran (images)"
    assert result.nodes["4"]["status"] == "cached" and "reason" not in result.nodes["4"]


def test_a_new_prompt_names_the_text_and_the_encoder_as_the_samplers_reason(executor):
    executor.run(txt2img(text="a cat"))
    reasons = ran(executor.run(txt2img(text="a dog")))
    assert set(reasons) == {"6", "3", "8", "9"}
    assert reasons["6"]["text"] == "text changed 'a cat' -> 'a dog'"
    assert reasons["3"]["text"] == "parent 6 re-ran (positive)"


def test_another_checkpoint_and_a_rewritten_checkpoint_file(executor, tmp_path):
    executor.run(txt2img(ckpt="a.ckpt"))
    reasons = ran(executor.run(txt2img(ckpt="b.ckpt")))
    assert set(reasons) == {"4", "6", "3", "8", "9"}
    assert reasons["4"]["changes"][0] == {"type": "constant", "input": "ckpt_name", "old": "a.ckpt",
                                          "new": "b.ckpt", "text": "ckpt_name changed 'a.ckpt' -> 'b.ckpt'"}
    assert reasons["4"]["changes"][1]["type"] == "fingerprint"  # a different file is different content too
    assert [c["text"] for c in reasons["3"]["changes"]] == ["parent 4 re-ran (model)", "parent 6 re-ran (positive)"]

    (tmp_path / "b.ckpt").write_bytes(b"retrained weights")  # same name, new content
    reasons = ran(executor.run(txt2img(ckpt="b.ckpt")))
    assert reasons["4"] == {"kind": "changed", "text": "its file changed on disk",
                            "changes": [{"type": "fingerprint", "text": "its file changed on disk"}]}

    reasons = ran(executor.run(txt2img(ckpt="a.ckpt")))  # back to a cached sub-graph: nothing upstream re-runs
    assert set(reasons) == set()


def test_switching_back_to_a_cached_parent_is_not_called_a_rerun(executor):
    executor.run(txt2img(text="a cat", seed=1))
    executor.run(txt2img(text="a dog", seed=1))
    result = executor.run(txt2img(text="a cat", seed=1))  # every node of this graph is still cached
    assert result.executed == []
    executor.run(txt2img(text="a cat", seed=5))
    reasons = ran(executor.run(txt2img(text="a dog", seed=5)))
    assert reasons["3"]["changes"] == [{"type": "parent_changed", "input": "positive", "node": "6",
                                        "text": "parent 6 gives another cached result (positive)"}]


def renamed(prompt: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The same workflow under other node ids (as another tab or client would send it)."""
    def rename(value: Any) -> Any:
        return [prefix + value[0], value[1]] if isinstance(value, list) else value

    return {prefix + n: {"class_type": node["class_type"], "inputs": {k: rename(v) for k, v in node["inputs"].items()}}
            for n, node in prompt.items()}


def test_an_eviction_under_a_small_budget_is_named_with_the_budget(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    sizes = {n: r["cache_bytes"] for n, r in Executor(registry(), Environment(tmp_path)).run(txt2img()).nodes.items()}
    budget = sum(sizes.values())  # exactly one graph's results
    executor = Executor(registry(), Environment(tmp_path), cache_bytes=budget)
    executor.run(txt2img(seed=1, text="a cat"))
    other = executor.run(renamed(txt2img(seed=9, text="a dog"), "b"))  # shares the loader and the empty latent
    assert other.executed == ["b6", "b3", "b8", "b9"]
    result = executor.run(txt2img(seed=1, text="a cat"))  # unchanged, but its results were pushed out
    reasons = ran(result)
    assert set(reasons) == {"6", "3", "8", "9"}
    for reason in reasons.values():
        assert reason == {"kind": "evicted", "budget": budget,
                          "text": f"evicted by the cache (budget {budget / 1024:.1f} KiB)"}
    assert result.nodes["4"]["status"] == "cached"


def test_freed_and_too_large_are_told_apart_from_evicted(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    executor = Executor(registry(), Environment(tmp_path))
    executor.run(txt2img())
    executor.free(cache=True, models=False)
    reasons = ran(executor.run(txt2img()))
    assert set(reasons) == {"3", "4", "5", "6", "8", "9"}
    assert {r["kind"] for r in reasons.values()} == {"freed"}

    tiny = Executor(registry(), Environment(tmp_path), cache_bytes=100)  # smaller than any result
    tiny.run(txt2img())
    reasons = ran(tiny.run(txt2img()))
    assert reasons["4"]["kind"] == "too_large" and reasons["4"]["budget"] == 100


def test_nodes_downstream_of_a_non_deterministic_node_name_it(executor):
    prompt = {"r": {"class_type": "Random", "inputs": {}}, "o": {"class_type": "Show", "inputs": {"value": ["r", 0]}}}
    executor.run(prompt)
    reasons = ran(executor.run(prompt))
    assert reasons["r"] == {"kind": "volatile", "text": "not deterministic, so never cached", "nodes": []}
    assert reasons["o"]["kind"] == "volatile" and reasons["o"]["nodes"] == ["r"]
    assert reasons["o"]["text"] == "downstream of non-deterministic node r, so never cached"


def test_costs_wall_time_cache_bytes_shapes_and_pixels(executor):
    result = executor.run({"n": {"class_type": "Nap", "inputs": {"ms": 30}},
                           "o": {"class_type": "Show", "inputs": {"value": ["n", 0]}}})
    assert result.nodes["n"]["wall_ms"] >= 30
    # the cache holds the output tuple (64) around one float32 element (4) plus the absent ui (64)
    assert result.nodes["n"]["cache_bytes"] == 64 + 4 + 64
    assert result.nodes["n"]["shapes"] == "" and result.nodes["o"]["shapes"] == "value=1"

    result = executor.run(txt2img())
    assert result.nodes["3"]["shapes"] == "latent=1x4x4x8;model=1;positive=1"
    assert result.nodes["3"]["pixels"] == 64 * 32 and result.nodes["9"]["pixels"] == 64 * 32
    assert result.nodes["4"]["pixels"] is None and result.nodes["3"]["steps"] == 2
    assert result.device == "cpu"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from Linux's /proc")
def test_peak_memory_of_a_node_that_touches_and_frees_64_mib(executor):
    result = executor.run({"h": {"class_type": "Hog", "inputs": {"mb": 64}},
                           "o": {"class_type": "Show", "inputs": {"value": ["h", 0]}}})
    peak = result.nodes["h"]["peak_bytes"]
    assert 60 * 2**20 <= peak <= 200 * 2**20, peak
    assert result.nodes["h"]["cache_bytes"] < 1000  # the block was let go; only one element is kept


def test_a_runtime_probe_supplies_device_and_peak(executor):
    class Probe:
        device = "cuda:0 test"
        starts = 0

        def start(self) -> None:
            Probe.starts += 1

        def peak_bytes(self) -> int:
            return 12345

    executor.env.services["memory_probe"] = Probe()
    result = executor.run(txt2img())
    assert result.device == "cuda:0 test" and Probe.starts == 6
    assert {r["peak_bytes"] for r in result.nodes.values()} == {12345}


def test_reason_events_go_out_before_and_after_each_node(executor):
    executor.run(txt2img(seed=1))
    events: list[tuple[str, dict]] = []
    executor.run(txt2img(seed=2), prompt_id="p", sink=lambda e, d: events.append((e, d)))
    reason_events = [d for e, d in events if e == REASON_EVENT]
    first = reason_events[0]["nodes"]
    assert {n: r["status"] for n, r in first.items()} == {"4": "cached", "5": "cached", "6": "cached",
                                                         "3": "pending", "8": "pending", "9": "pending"}
    assert first["3"]["reason"]["text"] == "seed changed 1 -> 2"
    after = [d["nodes"] for d in reason_events[1:]]
    assert [list(n) for n in after] == [["3"], ["8"], ["9"]]
    assert after[0]["3"]["status"] == "ran" and after[0]["3"]["wall_ms"] >= 0
    assert all(d["prompt_id"] == "p" for d in reason_events)


def test_a_failing_node_is_marked_failed_and_the_nodes_after_it_not_run(executor):
    result = executor.run({"a": {"class_type": "Nap", "inputs": {"ms": 1}},  # runs in order a, b, f, o
                           "b": {"class_type": "Show", "inputs": {"value": ["a", 0]}},
                           "f": {"class_type": "Fail", "inputs": {"message": "no"}},
                           "o": {"class_type": "Show", "inputs": {"value": ["f", 0]}}})
    assert result.status == "error"
    assert {n: r["status"] for n, r in result.nodes.items()} == {"a": "ran", "b": "ran", "f": "failed",
                                                                 "o": "not_run"}
    assert result.nodes["o"]["reason"]["kind"] == "new"


def test_estimate_unchanged_graph_runs_nothing_and_a_seed_change_names_three_nodes(executor):
    history: dict[tuple[str, str], list[Timing]] = {}

    def lookup(class_type: str, device: str) -> list[Timing]:
        return history.get((class_type, device), [])

    before = executor.estimate(txt2img(seed=1), history=lookup)
    assert before["run"] == ["4", "5", "6", "3", "8", "9"] and before["unknown"] == before["run"]
    assert before["complete"] is False and before["total_ms"] == 0

    result = executor.run(txt2img(seed=1))
    for node_id, report in result.nodes.items():
        history.setdefault((report["class_type"], result.device), []).insert(0, Timing(
            report["shapes"], report["steps"], report["pixels"], 100.0 + int(node_id)))
    unchanged = executor.estimate(txt2img(seed=1), history=lookup)
    assert unchanged["run"] == [] and unchanged["total_ms"] == 0 and unchanged["complete"] is True
    assert unchanged["cached"] == ["9"]

    hits_before = executor.cache.stats()["hits"]
    seed = executor.estimate(txt2img(seed=2), history=lookup)
    assert executor.cache.stats()["hits"] == hits_before  # an estimate only looks
    assert [(n["node"], n["class_type"], n["basis"]) for n in seed["nodes"]] == [
        ("3", "Sampler", "exact"), ("8", "Decode", "exact"), ("9", "Save", "exact")]
    assert seed["total_ms"] == pytest.approx(103 + 108 + 109)
    assert seed["nodes"][0]["reason"]["text"] == "seed changed 1 -> 2"

    steps = executor.estimate(txt2img(seed=2, steps=6), history=lookup)  # three times the steps
    sampler = steps["nodes"][0]
    assert sampler["basis"] == "scaled" and sampler["expected_ms"] == pytest.approx(3 * 103)
    assert executor.run(txt2img(seed=2)).executed == ["3", "8", "9"]  # what the estimate said


def test_expected_time_prefers_exact_then_same_shapes_scaled_then_same_size_then_scaled():
    rows = [Timing("a=1x4x8x8", 20, 4096, 1000.0), Timing("a=1x4x16x16", 20, 16384, 4100.0)]
    assert expected_time(rows, "a=1x4x8x8", 20, 4096) == (1000.0, "exact", 1)
    assert expected_time(rows, "a=1x4x8x8", 40, 4096) == (2000.0, "scaled", 1)  # same work, twice the steps
    # another node's timing of the same steps and pixels but other shapes is used only when nothing closer is
    assert expected_time(rows, None, 20, 16384) == (4100.0, "same size", 1)
    assert expected_time(rows, "b=3", 20, 16384) == (4100.0, "same size", 1)
    value, basis, samples = expected_time(rows, None, 10, 8192)  # half the steps, scaled from the newest row
    assert (value, basis, samples) == (1000 * 0.5 * 2, "scaled", 1)  # two candidates: the newest one counts
    assert expected_time(rows, None, None, 4096) == (None, "unknown", 0)  # steps unknown: no honest scale
    assert expected_time([], "x", 1, 1) == (None, "unknown", 0)


def test_a_first_run_that_loaded_the_model_is_outvoted_by_the_steady_runs_after_it():
    cold = Timing("s", 2, 64, 5000.0)
    steady = [Timing("s", 2, 64, ms) for ms in (110.0, 90.0, 100.0)]
    assert expected_time([steady[0], cold], "s", 2, 64) == (110.0, "exact", 1)  # the newest
    assert expected_time([*steady, cold], "s", 2, 64) == (100.0, "exact", 3)  # the median of the newest three


def test_input_shapes_reads_nested_tensors_and_skips_other_objects():
    values = {"latent": {"samples": torch.zeros(1, 4, 8, 8)}, "positive": [[torch.zeros(1, 77, 32), {"p": 1}]],
              "model": object(), "x": torch.zeros(3)}
    assert input_shapes(values) == "latent.samples=1x4x8x8;positive.0.0=1x77x32;x=3"
