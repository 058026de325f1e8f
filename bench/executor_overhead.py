"""Per-node cost of the executor and the cache, measured against calling the same node code directly.

A chain of N trivial nodes isolates what the engine adds: validation, cache keys, scheduling, events. Three runs are
timed: a cold run with the cache (every node executes), a re-run of the unchanged workflow (every node is a cache
hit: the cost of an identical re-queue) and the baseline (the nodes' execute() called in a plain loop).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.node import Input, Node, NodeOutput
from latentgraph.engine.registry import Registry
from latentgraph.engine.types import Image


class Start(Node):
    RETURN_TYPES = ("IMAGE",)
    size: int = Input(8)
    offset: float = Input(0.0)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.full((self.size,), self.offset),)


class Step(Node):
    RETURN_TYPES = ("IMAGE",)
    image: Image
    amount: float = Input(1.0)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.image + self.amount,)


class End(Node):
    OUTPUT_NODE = True
    image: Image

    def execute(self, ctx: RunContext) -> NodeOutput:
        return NodeOutput(ui={"sum": [float(self.image.sum())]})


def chain(length: int, salt: int) -> dict:
    prompt = {"0": {"class_type": "Start", "inputs": {"size": 8, "offset": salt}}}
    for i in range(1, length + 1):
        prompt[str(i)] = {"class_type": "Step", "inputs": {"image": [str(i - 1), 0], "amount": salt + i}}
    prompt["end"] = {"class_type": "End", "inputs": {"image": [str(length), 0]}}
    return prompt


def direct(length: int, salt: int, ctx: RunContext) -> float:
    (value,) = Start(size=8, offset=salt).execute(ctx)
    for i in range(1, length + 1):
        (value,) = Step.model_construct(image=value, amount=float(salt + i)).execute(ctx)
    return End.model_construct(image=value).execute(ctx).ui["sum"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="chain length")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    registry = Registry()
    for cls in (Start, Step, End):
        registry.register(cls)
    env = Environment(Path(tempfile.mkdtemp()))
    executor = Executor(registry, env)
    ctx = RunContext(env=env, node_id="x", prompt_id="p", prompt={}, extra_data={}, interrupt=InterruptToken(),
                     sink=lambda event, data: None)
    n = args.nodes + 2
    cold, hit, base = [], [], []
    for repeat in range(args.repeats):
        prompt = chain(args.nodes, salt=repeat * 10_000)
        t0 = time.perf_counter()
        result = executor.run(prompt)
        t1 = time.perf_counter()
        again = executor.run(prompt)
        t2 = time.perf_counter()
        expected = direct(args.nodes, repeat * 10_000, ctx)
        t3 = time.perf_counter()
        assert len(result.executed) == n and again.executed == []
        assert result.outputs["end"]["sum"][0] == expected
        cold.append(t1 - t0)
        hit.append(t2 - t1)
        base.append(t3 - t2)

    def us(values: list[float]) -> str:
        per_node = [v / n * 1e6 for v in values]
        return f"{statistics.median(per_node):8.1f} us/node (min {min(per_node):.1f}, max {max(per_node):.1f})"

    overhead = [(c - b) / n * 1e6 for c, b in zip(cold, base)]
    print(f"chain of {n} nodes, {args.repeats} repeats, medians")
    print(f"  direct execute() calls      {us(base)}")
    print(f"  engine, every node executes {us(cold)}")
    print(f"  engine, every node cached   {us(hit)}   (identical re-queue: {statistics.median(hit) * 1e3:.2f} ms)")
    print(f"  executor overhead           {statistics.median(overhead):8.1f} us/node")
    print(f"  ratio engine/direct         {statistics.median(c / b for c, b in zip(cold, base)):8.2f}x")


if __name__ == "__main__":
    main()
