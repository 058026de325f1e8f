"""Properties of the executor and its cache over random DAGs of cheap nodes."""

from __future__ import annotations

import copy
import gc

import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor

from tests.engine.cheap_nodes import Chain, cheap_registry

REGISTRY = cheap_registry()


@st.composite
def workflows(draw) -> dict:
    """Random DAGs: sources, combines linking to earlier nodes, and 1-3 Show outputs."""
    count = draw(st.integers(2, 9))
    prompt: dict[str, dict] = {}
    ids = [f"n{i}" for i in range(count)]
    for i, node_id in enumerate(ids):
        if i == 0 or draw(st.booleans()) and i < 3:
            prompt[node_id] = {"class_type": "Source", "inputs": {"value": draw(st.integers(0, 5)),
                                                                   "size": draw(st.integers(1, 8))}}
            continue
        a = draw(st.sampled_from(ids[:i]))
        inputs = {"a": [a, 0], "k": draw(st.integers(0, 3))}
        if draw(st.booleans()):
            inputs["b"] = [draw(st.sampled_from(ids[:i])), 0]
        prompt[node_id] = {"class_type": "Combine", "inputs": inputs}
    for j, target in enumerate(draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))):
        prompt[f"out{j}"] = {"class_type": "Show", "inputs": {"value": [target, 0]}}
    return prompt


def needed_nodes(prompt: dict) -> set[str]:
    graph = nx.DiGraph()
    for node_id, node in prompt.items():
        graph.add_node(node_id)
        for value in node["inputs"].values():
            if isinstance(value, list):
                graph.add_edge(value[0], node_id)
    outputs = [n for n, node in prompt.items() if node["class_type"] == "Show"]
    return set(outputs).union(*(nx.ancestors(graph, o) for o in outputs))


def descendants(prompt: dict, node_id: str) -> set[str]:
    graph = nx.DiGraph()
    for nid, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list):
                graph.add_edge(value[0], nid)
    return nx.descendants(graph, node_id) if node_id in graph else set()


def make_executor(tmp_path_factory, budget: int = 1 << 30) -> Executor:
    return Executor(REGISTRY, Environment(tmp_path_factory.mktemp("base")), cache_bytes=budget)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(prompt=workflows())
def test_each_needed_node_runs_once_and_a_rerun_runs_nothing(tmp_path_factory, prompt):
    executor = make_executor(tmp_path_factory)
    first = executor.run(prompt)
    assert first.status == "success"
    assert sorted(first.executed) == sorted(needed_nodes(prompt))
    second = executor.run(prompt)
    assert second.executed == []
    assert second.outputs == first.outputs


@SETTINGS
@given(prompt=workflows(), data=st.data())
def test_changing_one_constant_reruns_exactly_that_node_and_its_descendants(tmp_path_factory, prompt, data):
    executor = make_executor(tmp_path_factory)
    executor.run(prompt)
    candidates = sorted(n for n in needed_nodes(prompt) if prompt[n]["class_type"] != "Show")
    target = data.draw(st.sampled_from(candidates))
    changed = copy.deepcopy(prompt)
    field = "value" if changed[target]["class_type"] == "Source" else "k"
    changed[target]["inputs"][field] = 99_999  # a value no other node has, so no structural twin exists
    result = executor.run(changed)
    assert set(result.executed) == ({target} | descendants(changed, target)) & needed_nodes(changed)


@SETTINGS
@given(prompt=workflows())
def test_the_same_subgraph_under_other_ids_is_a_cache_hit(tmp_path_factory, prompt):
    executor = make_executor(tmp_path_factory)
    executor.run(prompt)

    def rename(node_id: str) -> str:
        return f"other:{node_id}"

    renamed = {
        rename(node_id): {
            "class_type": node["class_type"],
            "inputs": {k: [rename(v[0]), v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()},
        }
        for node_id, node in prompt.items()
    }
    assert executor.run(renamed).executed == []


@SETTINGS
@given(prompts=st.lists(workflows(), min_size=1, max_size=4), budget=st.integers(0, 600))
def test_byte_budget_is_never_exceeded_and_results_match_a_cacheless_run(tmp_path_factory, prompts, budget):
    cached = make_executor(tmp_path_factory, budget=budget)
    uncached = make_executor(tmp_path_factory, budget=0)
    for prompt in prompts + prompts:
        got = cached.run(prompt)
        assert cached.cache.bytes <= budget
        assert got.outputs == uncached.run(prompt).outputs
    assert len(uncached.cache) == 0


def test_non_deterministic_nodes_and_their_descendants_always_rerun(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    prompt = {
        "r": {"class_type": "Random", "inputs": {}},
        "c": {"class_type": "Combine", "inputs": {"a": ["r", 0], "k": 1}},
        "s": {"class_type": "Source", "inputs": {"value": 3}},
        "o1": {"class_type": "Show", "inputs": {"value": ["c", 0]}},
        "o2": {"class_type": "Show", "inputs": {"value": ["s", 0]}},
    }
    executor.run(prompt)
    again = executor.run(prompt)
    assert sorted(again.executed) == ["c", "o1", "r"]
    assert sorted(again.cached) == ["o2"]


def test_intermediates_are_released_after_their_last_consumer(tmp_path):
    """With no cache, a chain holds only the value in flight, not every intermediate."""
    executor = Executor(REGISTRY, Environment(tmp_path), cache_bytes=0)
    chain = {"s": {"class_type": "Source", "inputs": {"value": 1, "size": 64}}}
    previous = "s"
    for i in range(6):
        chain[f"c{i}"] = {"class_type": "Chain", "inputs": {"a": [previous, 0], "k": i}}
        previous = f"c{i}"
    chain["out"] = {"class_type": "Show", "inputs": {"value": [previous, 0]}}
    alive: list[int] = []

    def sink(event: str, data: dict) -> None:
        if event == "executing" and data["node"] == "out":
            gc.collect()
            alive.append(sum(ref() is not None for ref in Chain.produced))

    Chain.produced.clear()
    assert executor.run(chain, sink=sink).status == "success"
    assert len(Chain.produced) == 6
    assert alive == [1]  # only the last result, which "out" is about to consume
