"""Behaviour that mutation testing showed no engine test pinned down (bench/MUTATION.md lists each mutant).

mutmut 3.8.1 over engine/cache.py, engine/executor.py and engine/validate.py with tests/engine left these alive:
the set-bit scan behind `dependent_outputs` (shifts, masks and windows off by one still passed), two dynamic-choice
inputs in one validation, the node-record memory's limit and LRU refresh, what the reports of volatile and cached
nodes say (class, pixels, key, bytes held, shapes, cache generation), cache lookups of volatile nodes, wall times,
previews in a run's messages, the hidden PROMPT's `_meta`, validation messages and details no test read, Kahn's
order of a DAG, the interrupted event's payload and a failing listener's log line. The full run (all 1639
mutants) added: a failed run's error payload, the statuses and last event of an interrupted run, what listeners,
expanders and node checks receive, every node error as the editor gets it (message, details, extra_info), exclusive
bounds, mixed hashable/unhashable choices, which outputs depend on a faulty node (several outputs, cycles),
self-links, long cycles, cycles outside the requested outputs, and the `*` and comma-separated link types. Each test
compares with values worked out by hand or computed here.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, Any, ClassVar

import pytest
import torch
from latentgraph.engine import executor as executor_module
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import REASON_EVENT, Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.node import Hidden, Input, Node
from latentgraph.engine.types import Socket
from latentgraph.engine.validate import MAX_DEPENDENT_OUTPUTS, _Graph, _lowest_bits, validate
from latentgraph.engine.workflow import parse_prompt
from pydantic import Field

from tests.engine.cheap_nodes import Number, cheap_registry
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


def test_a_volatile_nodes_reason_still_names_a_node_upgrade(tmp_path) -> None:
    prompt = {"r": {"class_type": "Random", "inputs": {}},
              "m": {"class_type": "Scale", "inputs": {"a": ["r", 0], "factor": 2}},
              "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}}
    executor = Executor(registry_with(versioned(1, 0)), Environment(tmp_path))
    executor.run(prompt)
    executor.registry = registry_with(versioned(2, 1000))
    reason = executor.run(prompt).nodes["m"]["reason"]
    assert reason["kind"] == "volatile"
    assert {"type": "version", "old": 1, "new": 2, "text": "node version 1 -> 2"} in reason["changes"]


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
    assert [r.getMessage() for r in caplog.records if r.name == executor_module.log.name] == [
        "a run listener failed for prompt p1"]


# --- a failed run, an interrupted run, and run listeners ----------------------------------------------------------


class Hushed(Exception):
    """An exception without a message, from outside the builtins."""


class FailsHushed(Node):
    RETURN_TYPES = ("NUMBER",)

    def execute(self, ctx: RunContext) -> tuple:
        raise Hushed()


def test_a_failing_nodes_error_names_its_exception_class_and_is_sent_as_is(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(FailsHushed)
    before = int(time.time() * 1000)
    result = Executor(registry, Environment(tmp_path)).run(
        {"f": {"class_type": "FailsHushed", "inputs": {}}, "o": {"class_type": "Show", "inputs": {"value": ["f", 0]}}},
        prompt_id="p2")
    error = result.error
    assert error is not None and result.status == "error"
    # an empty message falls back to the class name; the type is module-qualified
    assert (error["prompt_id"], error["node_id"], error["node_type"]) == ("p2", "f", "FailsHushed")
    assert (error["exception_message"], error["exception_type"]) == (
        "Hushed", "tests.engine.test_mutation_kills.Hushed")
    assert error["current_inputs"] == {} and error["current_outputs"] == {}
    assert before <= error["timestamp"] <= time.time() * 1000
    assert [data for event, data in result.messages if event == "execution_error"] == [error]


def test_an_interrupted_run_marks_the_stopped_node_and_ends_idle(tmp_path) -> None:
    token = InterruptToken()
    token.set()
    before = int(time.time() * 1000)
    result = Executor(cheap_registry(), Environment(tmp_path)).run(_show("a", "sa", 1), prompt_id="p1",
                                                                   interrupt=token)
    ((_, data),) = [(e, d) for e, d in result.messages if e == "execution_interrupted"]
    assert before <= data["timestamp"] <= time.time() * 1000
    assert {node: report["status"] for node, report in result.nodes.items()} == {"a": "interrupted",
                                                                                 "sa": "not_run"}
    assert result.messages[-1] == ["executing", {"node": None, "display_node": None, "prompt_id": "p1"}]


def test_listeners_get_the_result_and_the_prompt_id(tmp_path) -> None:
    executor = Executor(cheap_registry(), Environment(tmp_path))
    seen: list[tuple[Any, str]] = []
    executor.listeners.append(lambda result, prompt_id: seen.append((result, prompt_id)))
    result = executor.run(_show("a", "sa", 1), prompt_id="p3")
    assert len(seen) == 1 and seen[0][0] is result and seen[0][1] == "p3"


# --- validation hands the environment to expanders and node checks -----------------------------------------------


class EnvChecked(Node):
    OUTPUT_NODE = True
    envs: ClassVar[list[Environment]] = []
    value: int = Input(0)

    @classmethod
    def check(cls, inputs: dict, env: Environment) -> list[tuple[str, str]]:
        cls.envs.append(env)
        return []

    def execute(self, ctx: RunContext) -> tuple:
        return ()


def test_expanders_and_node_checks_get_the_validations_environment(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(EnvChecked)
    expanded: list[Environment] = []

    def expander(data: Any, reg: Any, env: Environment) -> Any:
        expanded.append(env)
        return data

    registry.expanders.append(expander)
    EnvChecked.envs.clear()
    executor = Executor(registry, Environment(tmp_path))
    assert executor.validate({"e": {"class_type": "EnvChecked", "inputs": {}}}).ok
    assert expanded == [executor.env] and EnvChecked.envs == [executor.env]


# --- constants: what an error carries, exclusive bounds, choices that cannot all be hashed ------------------------


class Exclusive(Node):
    """Bounds declared with pydantic's own Field (gt/lt, exclusive), as a plugin may do."""

    OUTPUT_NODE = True
    count: int = Field(1, gt=0, lt=10)

    def execute(self, ctx: RunContext) -> tuple:
        return ()


class PickMixed(Node):
    """A listing with an unhashable entry (so no set of it is made) and a hashable one."""

    OUTPUT_NODE = True
    item: Any = Input(None, choices=lambda env: [[1, 2], "a"])

    def execute(self, ctx: RunContext) -> tuple:
        return ()


class PickWord(Node):
    """Hashable choices; a list value cannot be looked up in their set."""

    OUTPUT_NODE = True
    item: Any = Input(None, choices=lambda env: ["a", "b"])

    def execute(self, ctx: RunContext) -> tuple:
        return ()


class PickTwentyOne(Node):
    OUTPUT_NODE = True
    name: str = Input("", choices=lambda env: [f"c{i}" for i in range(21)])

    def execute(self, ctx: RunContext) -> tuple:
        return ()


def _constant_registry():
    registry = cheap_registry()
    for cls in (Exclusive, PickMixed, PickWord, PickTwentyOne):
        registry.register(cls)
    return registry


def _constant_errors(prompt: dict[str, Any], tmp_path) -> dict[str, list[dict[str, Any]]]:
    validation = validate(prompt, _constant_registry(), Environment(tmp_path))
    return {node: entry["errors"] for node, entry in validation.node_errors.items()}


def test_a_bad_constant_reports_the_inputs_config_and_the_value_received(tmp_path) -> None:
    errors = _constant_errors({"s": {"class_type": "Source", "inputs": {"value": -5000}},
                               "p": {"class_type": "Show", "inputs": {"value": ["s", 0]}},
                               "o": {"class_type": "Show", "inputs": {"value": 5}}}, tmp_path)
    assert errors["s"] == [{"type": "value_smaller_than_min", "message": "Value -5000 smaller than min of -1000",
                            "details": errors["s"][0]["details"],
                            "extra_info": {"input_name": "value", "received_value": -5000,
                                           "input_config": ["INT", {"default": 0, "min": -1000, "max": 100000}]}}]
    assert errors["o"][0]["extra_info"] == {"input_name": "value", "input_config": ["NUMBER", {}],
                                            "received_value": 5}


def test_exclusive_bounds_are_named_in_the_message(tmp_path) -> None:
    errors = _constant_errors({"low": {"class_type": "Exclusive", "inputs": {"count": 0}},
                               "high": {"class_type": "Exclusive", "inputs": {"count": 10}}}, tmp_path)
    assert [(e["type"], e["message"]) for e in errors["low"]] == [("value_smaller_than_min",
                                                                   "Value 0 smaller than min of 0")]
    assert [(e["type"], e["message"]) for e in errors["high"]] == [("value_bigger_than_max",
                                                                    "Value 10 bigger than max of 10")]


def test_choices_with_an_unhashable_entry_still_accept_a_listed_word(tmp_path) -> None:
    assert _constant_errors({"p": {"class_type": "PickMixed", "inputs": {"item": "a"}}}, tmp_path) == {}
    assert [e["type"] for e in _constant_errors({"p": {"class_type": "PickMixed", "inputs": {"item": "z"}}},
                                                tmp_path)["p"]] == ["value_not_in_list"]


def test_a_list_value_is_refused_by_word_choices(tmp_path) -> None:
    errors = _constant_errors({"p": {"class_type": "PickWord", "inputs": {"item": {"__value__": [1]}}}}, tmp_path)
    assert [e["type"] for e in errors["p"]] == ["value_not_in_list"]
    assert _constant_errors({"p": {"class_type": "PickWord", "inputs": {"item": "b"}}}, tmp_path) == {}


def test_twenty_one_choices_are_cut_at_twenty(tmp_path) -> None:
    (error,) = _constant_errors({"p": {"class_type": "PickTwentyOne", "inputs": {"name": "x"}}}, tmp_path)["p"]
    assert error["details"] == f"name: 'x' not in {[f'c{i}' for i in range(20)] + ['...']}"


# --- which outputs depend on a faulty node -------------------------------------------------------------------------


class Tap(Node):
    """An output node that also passes its value on, so that outputs can feed each other (and form a cycle)."""

    OUTPUT_NODE = True
    RETURN_TYPES = ("NUMBER",)
    value: Number | None = Input(None, optional=True)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


def _dependents(prompt: dict[str, Any], tmp_path) -> dict[str, list[str]]:
    registry = cheap_registry()
    registry.register(Tap)
    validation = validate(prompt, registry, Environment(tmp_path))
    return {node: entry["dependent_outputs"] for node, entry in validation.node_errors.items()}


def test_a_faulty_node_lists_every_output_below_it_and_no_other(tmp_path) -> None:
    # "a0" sorts first and does not depend on "s"; "o1" and "o2" both do, through different children
    prompt = {"t": {"class_type": "Source", "inputs": {"value": 1}},
              "a0": {"class_type": "Show", "inputs": {"value": ["t", 0]}},
              "s": {"class_type": "Source", "inputs": {"value": -5000}},
              "c1": {"class_type": "Chain", "inputs": {"a": ["s", 0]}},
              "o1": {"class_type": "Show", "inputs": {"value": ["c1", 0]}},
              "o2": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}
    assert _dependents(prompt, tmp_path) == {"s": ["o1", "o2"]}


def test_outputs_on_and_below_a_cycle_are_listed_for_nodes_above_it(tmp_path) -> None:
    # t1 and t2 feed each other (both outputs); s, above the cycle, is faulty too
    prompt = {"s": {"class_type": "Source", "inputs": {"value": -5000}},
              "t1": {"class_type": "Tap", "inputs": {"value": ["t2", 0]}},
              "t2": {"class_type": "Tap", "inputs": {"value": ["t1", 0]}},
              "m": {"class_type": "Combine", "inputs": {"a": ["s", 0], "b": ["t2", 0]}},
              "o": {"class_type": "Show", "inputs": {"value": ["m", 0]}}}
    assert _dependents(prompt, tmp_path) == {"s": ["o"], "t1": ["o", "t1", "t2"], "t2": ["o", "t1", "t2"]}


# --- node errors on inputs, message by message ---------------------------------------------------------------------


def _input_errors(prompt: dict[str, Any], tmp_path, **options: Any) -> dict[str, list[dict[str, Any]]]:
    validation = validate(prompt, cheap_registry(), Environment(tmp_path), **options)
    return {node: entry["errors"] for node, entry in validation.node_errors.items()}


NUMBER_SOCKET = ["NUMBER", {}]


def test_a_missing_required_input(tmp_path) -> None:
    errors = _input_errors({"c": {"class_type": "Combine", "inputs": {"k": 1}},
                            "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}, tmp_path)
    assert errors == {"c": [{"type": "required_input_missing", "message": "Required input is missing",
                             "details": "a", "extra_info": {"input_name": "a", "input_config": NUMBER_SOCKET}}]}


def test_a_list_that_is_not_a_link_and_the_inputs_after_it(tmp_path) -> None:
    long = list(range(300))
    errors = _input_errors({"s": {"class_type": "Source", "inputs": {}},
                            "c": {"class_type": "Combine", "inputs": {"a": ["s", 0, 1], "k": -5000}},
                            "d": {"class_type": "Combine", "inputs": {"a": long}},
                            "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}},
                            "p": {"class_type": "Show", "inputs": {"value": ["d", 0]}}}, tmp_path)
    assert errors["c"][0] == {"type": "bad_linked_input",
                              "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                              "details": "a: ['s', 0, 1]",
                              "extra_info": {"received_value": ["s", 0, 1], "input_name": "a",
                                             "input_config": NUMBER_SOCKET}}
    assert [e["type"] for e in errors["c"]] == ["bad_linked_input", "value_smaller_than_min"]
    assert errors["d"][0]["details"] == ("a: " + repr(long))[:500] and len(errors["d"][0]["details"]) == 500


def test_links_to_a_missing_node_an_unknown_node_and_one_past_the_outputs(tmp_path) -> None:
    errors = _input_errors({"s": {"class_type": "Source", "inputs": {}},
                            "u": {"class_type": "Nope", "inputs": {}},
                            "c1": {"class_type": "Combine", "inputs": {"a": ["nowhere", 0], "k": -5000}},
                            "c2": {"class_type": "Combine", "inputs": {"a": ["u", 0], "k": -5000}},
                            "c3": {"class_type": "Combine", "inputs": {"a": ["s", 1], "k": -5000}},
                            "o": {"class_type": "Show", "inputs": {"value": ["c1", 0]}},
                            "o2": {"class_type": "Show", "inputs": {"value": ["c2", 0]}},
                            "o3": {"class_type": "Show", "inputs": {"value": ["c3", 0]}}}, tmp_path)
    assert errors["c1"][0] == {"type": "bad_linked_input", "message": "Linked node does not exist",
                               "details": "a is linked to node nowhere, which is not in the workflow",
                               "extra_info": {"input_name": "a", "input_config": NUMBER_SOCKET,
                                              "linked_node": ["nowhere", 0]}}
    assert (errors["c3"][0]["message"], errors["c3"][0]["details"]) == (
        "Linked output does not exist", "a is linked to output 1 of node s (Source), which has 1 outputs")
    # the input after the faulty link is still checked
    for node, first in (("c1", "bad_linked_input"), ("c2", None), ("c3", "bad_linked_input")):
        assert [e["type"] for e in errors[node]] == [t for t in (first, "value_smaller_than_min") if t]


def test_a_type_mismatch_names_both_types(tmp_path) -> None:
    errors = _input_errors({"t": {"class_type": "Text", "inputs": {}},
                            "c": {"class_type": "Combine", "inputs": {"a": ["t", 0]}},
                            "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}, tmp_path)
    assert errors == {"c": [{"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
                             "details": "a, received_type(STRING) mismatch input_type(NUMBER)",
                             "extra_info": {"input_name": "a", "input_config": NUMBER_SOCKET,
                                            "linked_node": ["t", 0], "received_type": "STRING"}}]}


def test_a_custom_check_names_the_input_and_its_value(tmp_path) -> None:
    errors = _input_errors({"e": {"class_type": "Even", "inputs": {"value": 3}},
                            "o": {"class_type": "Show", "inputs": {"value": ["e", 0]}}}, tmp_path)
    assert errors == {"e": [{"type": "custom_validation_failed", "message": "value must be even", "details": "value",
                             "extra_info": {"input_name": "value", "received_value": 3}}]}


def test_an_unlinked_optional_socket_is_no_constant(tmp_path) -> None:
    validation = validate({"s": {"class_type": "Source", "inputs": {}},
                           "c": {"class_type": "Combine", "inputs": {"a": ["s", 0]}},
                           "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}}},
                          cheap_registry(), Environment(tmp_path))
    assert validation.constants["c"] == {"k": 0}


def test_a_long_list_of_missing_outputs_is_cut_at_2000_characters(tmp_path) -> None:
    missing = validate({"o": {"class_type": "Show", "inputs": {"value": 1}}}, cheap_registry(),
                       Environment(tmp_path), outputs=[f"missing{i}" for i in range(300)])
    details = missing.error["details"]
    assert len(details) == 2000 and details.startswith("requested outputs not in the workflow: ['missing0', ")


def test_a_prompt_without_outputs_says_what_to_add(tmp_path) -> None:
    validation = validate({"s": {"class_type": "Source", "inputs": {}}}, cheap_registry(), Environment(tmp_path))
    assert validation.ok is False
    assert validation.error == {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                "details": "add an output node such as SaveImage or PreviewImage", "extra_info": {}}


# --- cycles: self-links, cycles the requested outputs do not need, long cycles -------------------------------------


def test_a_node_linked_to_itself_is_a_cycle(tmp_path) -> None:
    errors = _input_errors({"x": {"class_type": "Combine", "inputs": {"a": ["x", 0]}},
                            "o": {"class_type": "Show", "inputs": {"value": ["x", 0]}}}, tmp_path)
    assert errors["x"] == [{"type": "dependency_cycle", "message": "Dependency cycle detected",
                            "details": "node x depends on itself through nodes ['x']", "extra_info": {}}]


def test_only_cycles_the_requested_outputs_need_are_reported(tmp_path) -> None:
    prompt = {"a": {"class_type": "Combine", "inputs": {"a": ["b", 0]}},
              "b": {"class_type": "Combine", "inputs": {"a": ["a", 0]}},
              "o": {"class_type": "Show", "inputs": {"value": ["b", 0]}},
              "x": {"class_type": "Combine", "inputs": {"a": ["y", 0]}},
              "y": {"class_type": "Combine", "inputs": {"a": ["x", 0]}},
              "p": {"class_type": "Show", "inputs": {"value": ["y", 0]}}}
    assert sorted(_input_errors(prompt, tmp_path, outputs=["o"])) == ["a", "b"]
    assert sorted(_input_errors(prompt, tmp_path)) == ["a", "b", "x", "y"]


def _ring(size: int) -> dict[str, Any]:
    names = [f"n{i:02}" for i in range(size)]
    prompt: dict[str, Any] = {name: {"class_type": "Chain", "inputs": {"a": [names[i - 1], 0]}}
                              for i, name in enumerate(names)}
    prompt["o"] = {"class_type": "Show", "inputs": {"value": ["n00", 0]}}
    return prompt


def test_a_cycle_of_twenty_is_listed_in_full_and_one_of_twenty_one_is_cut(tmp_path) -> None:
    twenty = ", ".join(f"'n{i:02}'" for i in range(20))
    assert _input_errors(_ring(20), tmp_path)["n05"][0]["details"] == \
        f"node n05 depends on itself through nodes [{twenty}]"
    assert _input_errors(_ring(21), tmp_path)["n20"][0]["details"] == \
        f"node n20 depends on itself through nodes [{twenty}, ...]"


# --- link types: the wildcard and comma-separated types ------------------------------------------------------------


class Both(Node):
    """An output of two types at once."""

    RETURN_TYPES = ("NUMBER,STRING",)

    def execute(self, ctx: RunContext) -> tuple:
        return ("1",)


class Takes(Node):
    OUTPUT_NODE = True
    anything: Annotated[Any, Socket("*")] | None = Input(None, optional=True)
    number_or_text: Annotated[Any, Socket("NUMBER,STRING")] | None = Input(None, optional=True)
    text: Annotated[Any, Socket("STRING")] | None = Input(None, optional=True)
    image: Annotated[Any, Socket("IMAGE,MASK")] | None = Input(None, optional=True)

    def execute(self, ctx: RunContext) -> tuple:
        return ()


def test_the_wildcard_and_comma_separated_types_match_their_parts(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Both)
    registry.register(Takes)

    def mismatched(inputs: dict[str, Any]) -> list[str]:
        prompt = {"t": {"class_type": "Text", "inputs": {}}, "b": {"class_type": "Both", "inputs": {}},
                  "k": {"class_type": "Takes", "inputs": inputs}}
        errors = validate(prompt, registry, Environment(tmp_path)).node_errors
        return sorted(e["extra_info"]["input_name"] for e in errors["k"]["errors"]) if errors else []

    assert mismatched({"anything": ["t", 0], "number_or_text": ["t", 0], "text": ["b", 0]}) == []
    assert mismatched({"image": ["t", 0]}) == ["image"]
    assert mismatched({"image": ["b", 0]}) == ["image"]
