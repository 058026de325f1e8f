"""Behaviour that mutation testing showed no engine test pinned down (bench/MUTATION.md lists each mutant).

mutmut 3.8.1 over engine/cache.py, engine/executor.py and engine/validate.py with tests/engine left these alive:
the set-bit scan behind `dependent_outputs` (any shift, mask or window off by one still passed), dynamic choices of
two different inputs in one validation (a listing cache keyed by nothing served one input's choices to the other),
the size of the node-record memory and which records it forgets, a node fed by a sized and an unsized parent, and
what a volatile node's reason says about its re-run parent. Each test compares with values computed here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from latentgraph.engine import executor as executor_module
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import Executor
from latentgraph.engine.node import Input, Node
from latentgraph.engine.validate import MAX_DEPENDENT_OUTPUTS, _lowest_bits, validate

from tests.engine.cheap_nodes import cheap_registry
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
