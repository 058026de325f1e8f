"""Runs that stop early: interrupts, failing nodes, and the engine staying usable afterwards."""

from __future__ import annotations

import threading

from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import InterruptToken

from tests.engine.cheap_nodes import Slow, cheap_registry

REGISTRY = cheap_registry()


def slow_prompt(steps: int = 500) -> dict:
    return {"slow": {"class_type": "Slow", "inputs": {"steps": steps}},
            "o": {"class_type": "Show", "inputs": {"value": ["slow", 0]}}}


def test_interrupt_during_a_long_node_stops_it_and_the_next_run_works(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    token = InterruptToken()
    events: list[tuple[str, dict]] = []

    def sink(event: str, data: dict) -> None:
        events.append((event, data))
        if event == "progress" and data["value"] == 5:
            threading.Thread(target=token.set).start()

    Slow.reached.clear()
    result = executor.run(slow_prompt(), sink=sink, interrupt=token)
    assert result.status == "interrupted"
    assert len(Slow.reached) < 500
    interrupted = [d for e, d in events if e == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == "slow" and interrupted[0]["node_type"] == "Slow"
    assert "execution_success" not in [e for e, _ in events]

    token.clear()
    again = executor.run(slow_prompt(steps=3), interrupt=token)
    assert again.status == "success"
    assert again.outputs["o"] == {"value": [3.0]}


def test_interrupt_set_before_a_run_stops_it_between_nodes(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    token = InterruptToken()
    token.set()
    result = executor.run(slow_prompt(3), interrupt=token)
    assert result.status == "interrupted"
    assert result.executed == []


def test_a_raising_node_fails_its_run_with_an_error_event_and_the_next_run_works(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    events: list[tuple[str, dict]] = []
    prompt = {
        "s": {"class_type": "Source", "inputs": {"value": 2}},
        "t": {"class_type": "Fail", "inputs": {"message": "the disk is full"}},
        "c": {"class_type": "Combine", "inputs": {"a": ["s", 0], "b": ["t", 0]}},
        "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}},
    }
    result = executor.run(prompt, sink=lambda e, d: events.append((e, d)))
    assert result.status == "error"
    error = result.error
    assert (error["node_id"], error["node_type"]) == ("t", "Fail")
    assert error["exception_message"] == "the disk is full"
    assert error["exception_type"] == "builtins.RuntimeError"
    assert any("the disk is full" in line for line in error["traceback"])
    assert error["current_inputs"] == {"message": "the disk is full"}
    assert [e for e, _ in events][-2:] == ["execution_error", "executing"]

    prompt["t"] = {"class_type": "Source", "inputs": {"value": 5}}
    fixed = executor.run(prompt)
    assert fixed.status == "success"
    assert fixed.outputs["o"] == {"value": [9.0]}
    assert "s" in fixed.cached  # the part that had succeeded was kept


def test_event_sequence_of_a_successful_run(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    events: list[tuple[str, dict]] = []
    result = executor.run(slow_prompt(2), prompt_id="p1", sink=lambda e, d: events.append((e, d)))
    names = [e for e, _ in events if not e.startswith("latentgraph.")]  # our extra events are checked apart
    assert names == ["execution_start", "execution_cached", "executing", "progress", "progress", "executing",
                     "executed", "execution_success", "executing"]
    assert all(d["prompt_id"] == "p1" for _, d in events)
    assert events[-1][1]["node"] is None
    assert result.messages == [[e, d] for e, d in events if not e.startswith("latentgraph.")]

    events.clear()
    executor.run(slow_prompt(2), prompt_id="p2", sink=lambda e, d: events.append((e, d)))
    assert [e for e, _ in events if not e.startswith("latentgraph.")] == [
        "execution_start", "execution_cached", "executed", "execution_success", "executing"]
    assert events[1][1]["nodes"] == ["o"]


def test_requested_outputs_limit_what_runs(tmp_path):
    executor = Executor(REGISTRY, Environment(tmp_path))
    prompt = {
        "a": {"class_type": "Source", "inputs": {"value": 1}},
        "b": {"class_type": "Source", "inputs": {"value": 2}},
        "oa": {"class_type": "Show", "inputs": {"value": ["a", 0]}},
        "ob": {"class_type": "Show", "inputs": {"value": ["b", 0]}},
    }
    result = executor.run(prompt, outputs=["ob"])
    assert sorted(result.executed) == ["b", "ob"]
