"""The shipped demo model, run through the engine with workflows/txt2img.json on prompts from the held-out set
(combinations never seen in training), draws the colour and background asked for."""

from __future__ import annotations

from pathlib import Path

from latentgraph.training.dataset import held_out_scenes
from latentgraph.training.evaluate import Settings, generate, load_workflow, make_executor, score

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


def test_held_out_prompts_meet_colour_and_background_targets(tmp_path: Path) -> None:
    scenes = held_out_scenes(10, seed=11)
    executor = make_executor(tmp_path)
    images = generate(executor, load_workflow(WORKFLOW), [s.caption() for s in scenes], Settings(steps=12, seed=5))
    accuracy, readings = score(images, scenes)
    detail = [(s.caption(), r) for s, r in zip(scenes, readings)]
    assert accuracy["colour"] >= 0.9, detail
    assert accuracy["background"] >= 0.95, detail
