"""Behaviour that mutation testing showed no engine test pinned down (bench/MUTATION.md lists each mutant).

mutmut 3.8.1 over engine/cache.py, engine/executor.py and engine/validate.py with tests/engine left these alive:
the set-bit scan behind `dependent_outputs` (shifts, masks and windows off by one still passed), two dynamic-choice
inputs in one validation, the node-record memory's limit and LRU refresh, what the reports of volatile and cached
nodes say (class, pixels, key, bytes held, shapes, cache generation), cache lookups of volatile nodes, wall times,
previews in a run's messages, the hidden PROMPT's `_meta`, validation messages and details no test read, Kahn's
order of a DAG, the interrupted event's payload and a failing listener's log line. Each test compares with values
worked out by hand or computed here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from latentgraph.engine import executor as executor_module
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import REASON_EVENT, Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.node import Hidden, Input, Node
from latentgraph.engine.validate import MAX_DEPENDENT_OUTPUTS, _Graph, _lowest_bits, validate
from latentgraph.engine.workflow import parse_prompt

from tests.engine.cheap_nodes import cheap_registry
from tests.engine.test_cache import registry_with, scale_workflow, versioned
from tests.engine.test_executor_contract import Witness
from tests.engine.test_validate_messages import registry as choice_registry

# --- the lowest set bits of a big int -----------------------------------------------------------------------------


def set_bits(value: int, limit: int) -> list[int]:
    """The reference: positions of the set bits, read off the binary digits from the right."""
    return [i for i, digit in enumerate(reversed(bin(value)[2:])) if digit == "1"][:limit]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, MAX_DEPENDENT_OUTPUTS, 50])
def test_lowest_bits_are_the_lowest_set_bits_in_order(limit: int) -> None:
    """Random ints of up to 5000 bits, sparse and dense, plus bits placed at and around the scan window's edge
    (4 * limit + 64 bits) and beyond several windows."""
    rng = random.Random(limit)
    window = 4 * limit + 64
    values = [1, 2, 3, 0b1011, (1 << window) | 1, (1 << (window - 1)) | (1 << window) | (1 << (window + 1)),
              (1 << (3 * window + 5)) | (1 << (window + 2)), (1 << 4000) - 1]
    values += [rng.getrandbits(rng.choice([8, 100, 1000, 5000])) for _ in range(40)]
    values += [sum(1 << rng.randrange(5000) for _ in range(rng.randrange(1, 60))) for _ in range(40)]
    for value in values:
        assert _lowest_bits(value, limit) == set_bits(value, limit), (hex(value), limit)
    assert _lowest_bits(0, limit) == []


# --- dynamic choices of two inputs in one validation -------------------------------------------------------------


def test_two_dynamic_choice_inputs_each_check_against_their_own_listing(tmp_path) -> None:
    """Pick lists file names, PickPair lists pairs; in one validation each value is checked against its own
    listing, whichever node is checked first."""
    for first, second in (("p", "q"), ("q", "p")):
        prompt = {first: {"class_type": "Pick", "inputs": {"name": "item3.png"}},
                  second: {"class_type": "PickPair", "inputs": {"pair": {"__value__": [3, 4]}}}}
        assert validate(prompt, choice_registry(), Environment(tmp_path)).node_errors == {}


# --- the node-record memory ----------------------------------------------------------------------------------------


def _show(source: str, show: str, value: int) -> dict[str, Any]:
    return {source: {"class_type": "Source", "inputs": {"value": value}},
            show: {"class_type": "Show", "inputs": {"value": [source, 0]}}}


def test_records_keep_the_most_recently_used_node_ids_up_to_the_limit(tmp_path, monkeypatch) -> None:
    """With room for 4 records, the oldest is forgotten first; a node id that is used again (here a cache hit)
    becomes the most recent, so it outlives ids remembered after its first use. Orders worked out by hand."""
    monkeypatch.setattr(executor_module, "MAX_RECORDS", 4)
    executor = Executor(cheap_registry(), Environment(tmp_path))
    executor.run(_show("a", "sa", 1))
    assert list(executor.records) == ["a", "sa"]
    executor.run(_show("b", "sb", 2))
    assert list(executor.records) == ["a", "sa", "b", "sb"]  # exactly the limit: nothing forgotten
    prompt = {"b": {"class_type": "Source", "inputs": {"value": 2}},
              "c": {"class_type": "Chain", "inputs": {"a": ["b", 0], "k": 1}},
              "sc": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}
    result = executor.run(prompt)
    assert result.cached == ["b"] and result.executed == ["c", "sc"]
    # "b" moves past "sb"; "c" and "sc" push out "a" and "sa"
    assert list(executor.records) == ["sb", "b", "c", "sc"]


def test_a_volatile_nodes_reason_names_its_re_run_parent(tmp_path) -> None:
    """A deterministic node below a non-deterministic one is never cached, and on a re-run its reason also says
    that its parent re-ran (the parent's result is new each time)."""
    executor = Executor(cheap_registry(), Environment(tmp_path))
    prompt = {"r": {"class_type": "Random", "inputs": {}},
              "c": {"class_type": "Chain", "inputs": {"a": ["r", 0], "k": 1}},
              "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}
    executor.run(prompt)
    reason = executor.run(prompt).nodes["c"]["reason"]
    assert reason["kind"] == "volatile" and reason["nodes"] == ["r"]
    assert reason["changes"] == [{"type": "parent_ran", "input": "a", "node": "r", "text": "parent r re-ran (a)"}]


# --- pixels through a node with a sized and an unsized parent ----------------------------------------------------


class Canvas(Node):
    """A node that says how many pixels it works on (width x height), like an empty latent."""

    RETURN_TYPES = ("NUMBER",)
    width: int = Input(8, ge=1, le=4096)
    height: int = Input(8, ge=1, le=4096)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.zeros(1),)


def test_a_node_takes_the_pixels_of_its_sized_parent_whichever_input_it_is(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Canvas)
    for sized, unsized in (("a", "b"), ("b", "a")):
        prompt = {"canvas": {"class_type": "Canvas", "inputs": {"width": 24, "height": 10}},
                  "number": {"class_type": "Source", "inputs": {"value": 2}},
                  "mix": {"class_type": "Combine", "inputs": {sized: ["canvas", 0], unsized: ["number", 0]}},
                  "out": {"class_type": "Show", "inputs": {"value": ["mix", 0]}}}
        result = Executor(registry, Environment(tmp_path)).run(prompt)
        assert result.status == "success"
        pixels = {node: report["pixels"] for node, report in result.nodes.items()}
        assert pixels == {"canvas": 240, "number": None, "mix": 240, "out": 240}


class NoisyCanvas(Node):
    """Not deterministic, yet sized: its pixels are reported like any other node's."""

    RETURN_TYPES = ("NUMBER",)
    DETERMINISTIC = False
    width: int = Input(8, ge=1, le=4096)
    height: int = Input(8, ge=1, le=4096)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.rand(1),)


def test_a_volatile_nodes_report_names_its_class_and_pixels(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(NoisyCanvas)
    prompt = {"n": {"class_type": "NoisyCanvas", "inputs": {"width": 6, "height": 5}},
              "o": {"class_type": "Show", "inputs": {"value": ["n", 0]}}}
    nodes = Executor(registry, Environment(tmp_path)).run(prompt).nodes
    assert {node: (r["class_type"], r["pixels"], r["key"]) for node, r in nodes.items()} == \
        {"n": ("NoisyCanvas", 30, None), "o": ("Show", 30, None)}


# --- cached nodes: their reports and what their records keep ----------------------------------------------------


def test_a_cached_nodes_report_names_its_class_and_the_bytes_it_holds(tmp_path) -> None:
    executor = Executor(cheap_registry(), Environment(tmp_path))
    executor.run(_show("a", "sa", 1))
    result = executor.run({"a": {"class_type": "Source", "inputs": {"value": 1}},
                           "c": {"class_type": "Chain", "inputs": {"a": ["a", 0], "k": 2}},
                           "sc": {"class_type": "Show", "inputs": {"value": ["c", 0]}}})
    report = result.nodes["a"]
    # a one-element float32 tensor in a 1-tuple, no UI: 64 (tuple) + 4 + 64 (None), as test_cache.py counts
    assert (report["class_type"], report["status"], report["cache_bytes"]) == ("Source", "cached", 64 + 4 + 64)
    assert report["key"] == executor.records["a"].key[:16]


def test_a_cached_node_keeps_the_input_shapes_measured_when_it_ran(tmp_path) -> None:
    """A class's first run is probed and records its input shapes; when the node is later a cache hit, its record
    still has them (estimates match timings by shapes)."""
    executor = Executor(cheap_registry(), Environment(tmp_path))
    chain = {"a": {"class_type": "Source", "inputs": {"value": 1, "size": 3}},
             "c": {"class_type": "Chain", "inputs": {"a": ["a", 0], "k": 2}}}
    executor.run({**chain, "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}})
    shapes = executor.records["c"].shapes
    assert shapes == "a=3"
    result = executor.run({**chain, "m": {"class_type": "Combine", "inputs": {"a": ["c", 0], "k": 5}},
                           "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}})
    assert "c" in result.cached
    assert executor.records["c"].shapes == shapes


def test_a_cached_node_evicted_later_is_told_as_evicted_not_freed(tmp_path) -> None:
    """Records of cache hits carry the cache generation too: after an eviction (no free) the reason is
    `evicted`. Entry sizes as test_cache.py counts them: a Source result 132 bytes (64 + 4 + 64), a Show entry
    256 (64 for its empty outputs, 64 + 64 + 64 for {"value": [x]}); the budget holds one of each."""
    executor = Executor(cheap_registry(), Environment(tmp_path), cache_bytes=132 + 256)
    executor.run(_show("a", "sa", 1))
    assert len(executor.cache) == 2
    second = executor.run({"a": {"class_type": "Source", "inputs": {"value": 1}},
                           "b": {"class_type": "Source", "inputs": {"value": 2}},
                           "m": {"class_type": "Combine", "inputs": {"a": ["a", 0], "b": ["b", 0]}},
                           "sm": {"class_type": "Show", "inputs": {"value": ["m", 0]}}})
    assert second.cached == ["a"]  # a hit, later evicted by m and sm
    reason = executor.run(_show("a", "sa", 1)).nodes["a"]["reason"]
    assert reason["kind"] == "evicted"


def test_volatile_nodes_are_not_looked_up_in_the_cache(tmp_path) -> None:
    """A non-deterministic node's result is never stored, so looking it up would only count a miss."""
    executor = Executor(cheap_registry(), Environment(tmp_path))
    executor.run({"r": {"class_type": "Random", "inputs": {}},
                  "o": {"class_type": "Show", "inputs": {"value": ["r", 0]}}})
    assert (executor.cache.hits, executor.cache.misses) == (0, 0)
    executor.run(_show("a", "sa", 1))  # deterministic nodes are looked up: two misses
    assert (executor.cache.hits, executor.cache.misses) == (0, 2)


def test_a_node_upgrade_is_named_in_the_reason(tmp_path) -> None:
    executor = Executor(registry_with(versioned(1, 0)), Environment(tmp_path))
    executor.run(scale_workflow())
    executor.registry = registry_with(versioned(2, 1000))
    reason = executor.run(scale_workflow()).nodes["m"]["reason"]
    assert reason["kind"] == "changed"
    assert reason["changes"] == [{"type": "version", "old": 1, "new": 2, "text": "node version 1 -> 2"}]


# --- what the run hands to nodes and keeps in its messages -------------------------------------------------------


class Previewing(Node):
    """An output node that sends a preview, as a sampler does at each step."""

    OUTPUT_NODE = True
    value: Any = Input(None, optional=True)

    def execute(self, ctx: RunContext) -> tuple:
        ctx.preview("an image")
        return ()


def test_previews_reach_the_sink_but_not_the_kept_messages(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Previewing)
    events: list[str] = []
    result = Executor(registry, Environment(tmp_path)).run({"p": {"class_type": "Previewing", "inputs": {}}},
                                                           sink=lambda event, data: events.append(event))
    assert "preview" in events
    assert "preview" not in [event for event, _ in result.messages]
    assert [event for event, _ in result.messages] == [e for e in events if e not in ("preview", REASON_EVENT)]


def test_the_prompt_input_carries_each_nodes_meta_under_its_json_name(tmp_path) -> None:
    """ComfyUI's hidden PROMPT is the workflow as sent: `_meta`, not the model's field name `meta`."""
    Witness.seen.clear()
    prompt = {"s": {"class_type": "Source", "inputs": {"value": 4}, "_meta": {"title": "Four"}},
              "w7": {"class_type": "Witness", "inputs": {"value": ["s", 0]}}}
    registry = cheap_registry()
    registry.register(Witness)
    Executor(registry, Environment(tmp_path)).run(prompt)
    (seen,) = Witness.seen
    assert seen["prompt"]["s"] == {"class_type": "Source", "inputs": {"value": 4}, "_meta": {"title": "Four"}}


# --- a ran node's report: wall time and bytes held ----------------------------------------------------------------


def test_wall_time_is_in_milliseconds_to_the_microsecond(tmp_path) -> None:
    """Slow sleeps 3 x 10 ms: its wall time is at least 30 ms and far below the clock's absolute reading; every
    time is rounded to 3 decimals, and with six nodes at least one has a fraction of a millisecond."""
    prompt: dict[str, Any] = {"slow": {"class_type": "Slow", "inputs": {"steps": 3}},
                              "o": {"class_type": "Show", "inputs": {"value": ["slow", 0]}}}
    for i in range(4):
        prompt[f"s{i}"] = {"class_type": "Source", "inputs": {"value": i}}
        prompt[f"o{i}"] = {"class_type": "Show", "inputs": {"value": [f"s{i}", 0]}}
    nodes = Executor(cheap_registry(), Environment(tmp_path)).run(prompt).nodes
    times = [report["wall_ms"] for report in nodes.values()]
    assert 30 <= nodes["slow"]["wall_ms"] < 10_000
    assert all(t == round(t, 3) for t in times)
    assert any(t != int(t) for t in times)


def test_nodes_whose_results_are_not_kept_hold_no_bytes(tmp_path) -> None:
    """A volatile node's result and one larger than the budget are not in the cache: 0 bytes held."""
    registry = cheap_registry()
    registry.register(NoisyCanvas)
    tiny = Executor(registry, Environment(tmp_path), cache_bytes=100)  # below any entry (132 bytes at least)
    nodes = tiny.run({"n": {"class_type": "NoisyCanvas", "inputs": {}},
                      "s": {"class_type": "Source", "inputs": {"value": 1}},
                      "m": {"class_type": "Combine", "inputs": {"a": ["n", 0], "b": ["s", 0]}},
                      "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}}).nodes
    assert {node: r["cache_bytes"] for node, r in nodes.items()} == {"n": 0, "s": 0, "m": 0, "o": 0}
    assert len(tiny.cache) == 0


# --- validation messages and the graph order ----------------------------------------------------------------------


class HiddenFirst(Node):
    """A hidden input declared before an ordinary one: the ordinary one is still checked."""

    OUTPUT_NODE = True
    unique_id: str | None = Hidden("UNIQUE_ID")
    count: int = Input(1, ge=0, le=10)

    def execute(self, ctx: RunContext) -> tuple:
        return ()


def _twenty(env: Environment) -> list[str]:
    return [f"c{i}" for i in range(20)]


class PickTwenty(Node):
    OUTPUT_NODE = True
    name: str = Input("", choices=_twenty)

    def execute(self, ctx: RunContext) -> tuple:
        return ()


def _validation_registry():
    registry = cheap_registry()
    for cls in (HiddenFirst, PickTwenty):
        registry.register(cls)
    return registry


def _errors(prompt: dict[str, Any], tmp_path, **options: Any) -> dict[str, list[dict[str, Any]]]:
    validation = validate(prompt, _validation_registry(), Environment(tmp_path), **options)
    return {node: entry["errors"] for node, entry in validation.node_errors.items()}


def test_inputs_after_a_hidden_one_are_checked(tmp_path) -> None:
    (error,) = _errors({"h": {"class_type": "HiddenFirst", "inputs": {"count": 11}}}, tmp_path)["h"]
    assert error["type"] == "value_bigger_than_max"


def test_twenty_choices_are_listed_in_full(tmp_path) -> None:
    (error,) = _errors({"p": {"class_type": "PickTwenty", "inputs": {"name": "x"}}}, tmp_path)["p"]
    assert error["details"] == f"name: 'x' not in {[f'c{i}' for i in range(20)]}"


def test_a_constant_where_a_link_belongs(tmp_path) -> None:
    (error,) = _errors({"o": {"class_type": "Show", "inputs": {"value": 5}}}, tmp_path)["o"]
    assert (error["type"], error["message"], error["details"]) == (
        "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
        "value expects a link of type NUMBER")


def test_an_unknown_node_type_is_reported_and_the_other_nodes_are_still_checked(tmp_path) -> None:
    errors = _errors({"a": {"class_type": "Nope", "inputs": {}},
                      "b": {"class_type": "HiddenFirst", "inputs": {"count": -1}},
                      "o": {"class_type": "Show", "inputs": {"value": ["a", 0]}}}, tmp_path)
    assert errors["a"] == [{"type": "invalid_prompt", "message": "Node type 'Nope' is not known",
                            "details": "node a uses class_type 'Nope'; is the node package installed?",
                            "extra_info": {}}]
    assert [e["type"] for e in errors["b"]] == ["value_smaller_than_min"]
    assert "o" not in errors  # a link to an unknown node is reported on that node only


def test_a_link_to_a_missing_output_names_the_link(tmp_path) -> None:
    (error,) = _errors({"s": {"class_type": "Source", "inputs": {}},
                        "o": {"class_type": "Show", "inputs": {"value": ["s", 3]}}}, tmp_path)["o"]
    assert (error["type"], error["message"]) == ("bad_linked_input", "Linked output does not exist")
    assert error["details"] == "value is linked to output 3 of node s (Source), which has 1 outputs"
    assert error["extra_info"]["linked_node"] == ["s", 3] and error["extra_info"]["input_name"] == "value"


def test_a_cycle_is_told_with_its_nodes(tmp_path) -> None:
    errors = _errors({"x": {"class_type": "Combine", "inputs": {"a": ["y", 0]}},
                      "y": {"class_type": "Combine", "inputs": {"a": ["x", 0]}},
                      "o": {"class_type": "Show", "inputs": {"value": ["y", 0]}}}, tmp_path)
    assert errors["x"][0]["details"] == "node x depends on itself through nodes ['x', 'y']"
    assert errors["y"][0]["details"] == "node y depends on itself through nodes ['x', 'y']"


def test_missing_requested_outputs_and_a_prompt_without_outputs(tmp_path) -> None:
    missing = validate({"o": {"class_type": "Show", "inputs": {"value": 1}}}, _validation_registry(),
                       Environment(tmp_path), outputs=["zz"])
    assert (missing.error["type"], missing.error["message"]) == ("invalid_prompt", "Invalid prompt")
    none = validate({"a": {"class_type": "Nope", "inputs": {}}}, _validation_registry(), Environment(tmp_path))
    assert none.error["type"] == "prompt_no_outputs"
    assert list(none.node_errors) == ["a"]  # the unknown node is still reported


def test_an_acyclic_graph_is_ordered_in_full(tmp_path) -> None:
    """Kahn's order places every node of a DAG, parents first; nothing is left over as cyclic."""
    prompt = {"s": {"class_type": "Source", "inputs": {}},
              "t": {"class_type": "Source", "inputs": {}},
              "m": {"class_type": "Combine", "inputs": {"a": ["s", 0], "b": ["t", 0]}},
              "c": {"class_type": "Chain", "inputs": {"a": ["m", 0]}},
              "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}
    order, leftover = _Graph.of(parse_prompt(prompt)).topological()
    assert leftover == set() and sorted(order) == sorted(prompt)
    assert all(order.index(p) < order.index(n) for n, p in [("m", "s"), ("m", "t"), ("c", "m"), ("o", "c")])


def test_the_interrupted_event_and_a_failing_listeners_log(tmp_path, caplog) -> None:
    executor = Executor(cheap_registry(), Environment(tmp_path))

    def failing(result, prompt_id: str) -> None:
        raise OSError("disk full")

    executor.listeners.append(failing)
    token = InterruptToken()
    token.set()
    with caplog.at_level("ERROR"):
        result = executor.run(_show("a", "sa", 1), prompt_id="p1", interrupt=token)
    assert result.status == "interrupted"
    ((_, data),) = [(e, d) for e, d in result.messages if e == "execution_interrupted"]
    assert (data["prompt_id"], data["node_id"], data["node_type"], data["executed"]) == ("p1", "a", "Source", [])
    assert "a run listener failed for prompt p1" in caplog.text
