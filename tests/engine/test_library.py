"""The workflow library: interfaces read from declaration nodes, typed by the node inputs they set; binding and
errors by input name; names, content-hash versions and pinning over folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from latentgraph.engine.library import (
    InterfaceError,
    Library,
    WorkflowNotFound,
    bind,
    content_hash,
    extract_interface,
    prepare,
)
from latentgraph.nodes import load_registry, make_environment

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "workflows").glob("*.json"))
PER_CLASS = {  # what a workflow must declare when it has a node of this class (target input -> input name)
    "CLIPTextEncode": "prompt", "KSampler": "seed", "CheckpointLoaderSimple": "checkpoint", "LoadImage": "image",
    "EmptyLatentImage": "width", "EmptySD3LatentImage": "width", "KSamplerAdvanced": "seed",
}


@pytest.fixture(scope="module")
def registry():
    return load_registry(plugins=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_environment(tmp_path_factory.mktemp("library"))


def _widget(info: dict, name: str) -> tuple:
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return tuple(info["input"][section][name])
    raise KeyError(name)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_inputs_have_the_constraints_of_the_widgets_they_set(path: Path, registry, env) -> None:
    """Checked against the editor's object_info (what ComfyUI's editor builds its widgets from), an independent
    view of the same declarations: min/max, choice lists, and the workflow's own value as default."""
    prompt = json.loads(path.read_text())
    interface = extract_interface(prompt, registry, env)
    object_info = registry.object_info(env)
    classes = {node["class_type"] for node in prompt.values()}
    for cls, needed in PER_CLASS.items():
        if cls in classes:
            assert needed in interface.inputs, f"{path.stem} has a {cls} but declares no {needed!r}"
    assert {"prompt", "negative", "seed", "checkpoint"} <= set(interface.inputs)
    assert [out.type for out in interface.outputs.values()] == ["IMAGE"]
    assert interface.version == "1.0" and interface.description
    for name, inp in interface.inputs.items():
        schema = inp.schema
        assert schema["title"] == name and schema["description"]
        widgets = [_widget(object_info[prompt[t.node]["class_type"]], t.input) for t in inp.targets]
        for kind, _ in widgets:
            if isinstance(kind, list):  # a choice: the schema lists the same choices (installed files included)
                assert schema["enum"] == kind and schema["type"] == "string"
            else:
                assert schema["type"] == {"INT": "integer", "FLOAT": "number", "STRING": "string"}[kind]
        # one input setting several widgets accepts what all of them accept: the tightest range
        mins = [o["min"] for _, o in widgets if "min" in o]
        maxes = [o["max"] for _, o in widgets if "max" in o]
        assert schema.get("minimum") == (max(mins) if mins else None)
        assert schema.get("maximum") == (min(maxes) if maxes else None)
        for target in inp.targets[:1]:
            node = prompt[target.node]
            current = node["inputs"][target.input]
            assert inp.default == current
            if "enum" not in schema or current in schema["enum"]:
                assert schema["default"] == current
            else:  # a model this machine lacks (the SDXL and SD3 workflows): not offered as a valid default
                assert "default" not in schema and schema["x-workflow-default"] == current


def test_binding_nothing_is_the_workflow_itself_and_values_go_to_every_target(registry, env) -> None:
    prompt = json.loads((ROOT / "workflows" / "hires_fix.json").read_text())
    interface = extract_interface(prompt, registry, env)
    assert bind(prompt, interface, {}) == prompt
    bound = bind(prompt, interface, {"seed": 5, "prompt": "x"})
    assert bound["3"]["inputs"]["seed"] == bound["11"]["inputs"]["seed"] == 5 and bound["6"]["inputs"]["text"] == "x"
    assert prompt["3"]["inputs"]["seed"] == 42  # the library's copy is untouched
    assert content_hash(json.loads(json.dumps(prompt, indent=4, sort_keys=True))) == content_hash(prompt)
    assert content_hash(bound) != content_hash(prompt)


def test_bad_values_are_reported_by_input_name(registry, env) -> None:
    prompt = json.loads((ROOT / "workflows" / "hires_fix.json").read_text())
    interface = extract_interface(prompt, registry, env)
    prepared = prepare(prompt, interface, {"seed": 2**64, "steps": 0, "checkpoint": "nope", "x": 1}, registry, env)
    assert not prepared.ok
    errors = {name: [e["type"] for e in errs] for name, errs in prepared.input_errors.items()}
    # one seed feeds two samplers: one error, not two
    assert errors == {"seed": ["value_bigger_than_max"], "steps": ["value_smaller_than_min"],
                      "checkpoint": ["value_not_in_list"], "x": ["unknown_input"]}
    assert prepared.input_errors["seed"][0]["details"].startswith("seed")
    assert prepared.node_errors == {}
    good = prepare(prompt, interface, {"seed": 3, "steps": 2}, registry, env)
    assert good.ok and good.validation.outputs == ["9"]


def _with(prompt: dict, **declarations: dict) -> dict:
    return {**prompt, **{node_id: decl for node_id, decl in declarations.items()}}


def test_inconsistent_declarations_are_errors_naming_the_node(registry, env) -> None:
    prompt = {k: v for k, v in json.loads((ROOT / "workflows" / "txt2img.json").read_text()).items()
              if not v["class_type"].startswith("Workflow")}
    cases = {
        "no node with id or title 'Sampler'": {"class_type": "WorkflowInput", "inputs": {
            "name": "a", "target": "Sampler.seed"}},
        "KSampler has no input 'sed'": {"class_type": "WorkflowInput", "inputs": {"name": "a", "target": "3.sed"}},
        "is a socket (MODEL)": {"class_type": "WorkflowInput", "inputs": {"name": "a", "target": "3.model"}},
        "is a STRING, unlike the first target (INT)": {"class_type": "WorkflowInput", "inputs": {
            "name": "a", "target": "3.seed, 6.text"}},
        "must be a word": {"class_type": "WorkflowInput", "inputs": {"name": "not a name", "target": "3.seed"}},
        "has no output 'LATENT'": {"class_type": "WorkflowOutput", "inputs": {"name": "o", "source": "8.LATENT"}},
    }
    for message, declaration in cases.items():
        with pytest.raises(InterfaceError, match="node 50 .*" + message.replace("(", r"\(").replace(")", r"\)")):
            extract_interface(_with(prompt, **{"50": declaration}), registry, env)
    linked = json.loads(json.dumps(prompt))
    linked["3"]["inputs"]["seed"] = ["60", 0]
    with pytest.raises(InterfaceError, match="linked from node 60"):
        extract_interface(_with(linked, **{"50": {"class_type": "WorkflowInput", "inputs": {
            "name": "s", "target": "KSampler.seed"}}}), registry, env)
    # Titles work as --set's do, and an output may be a node's value instead of an output node's files.
    interface = extract_interface(_with(prompt, **{
        "50": {"class_type": "WorkflowInput", "inputs": {"name": "s", "target": "KSampler.seed"}},
        "51": {"class_type": "WorkflowOutput", "inputs": {"name": "latent", "source": "KSampler.LATENT"}}}),
        registry, env)
    assert interface.inputs["s"].targets[0].node == "3"
    assert (interface.outputs["latent"].node, interface.outputs["latent"].index) == ("3", 0)
    assert extract_interface(prompt, registry, env).inputs == {}  # no declarations: no inputs, still a workflow


def test_library_names_precedence_and_pins(tmp_path: Path) -> None:
    first, second, store = tmp_path / "first", tmp_path / "second", tmp_path / "store"
    node = {"class_type": "SaveImage", "inputs": {"filename_prefix": "a"}}
    info = {"class_type": "WorkflowInfo", "inputs": {"version": "2.0", "description": "d"}}
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    (first / "sub" / "deep.json").write_text(json.dumps({"1": node}))
    (first / "both.json").write_text(json.dumps({"1": node, "2": info}))
    (second / "both.json").write_text(json.dumps({"1": node}))
    (second / "broken.json").write_text("{nope")
    (second / "editor.json").write_text(json.dumps({"nodes": [], "links": []}))
    library = Library([first, second], store, to_api=lambda doc: {"1": node})
    found = library.scan()
    assert sorted(found) == ["both", "editor", "sub/deep"]  # broken.json is skipped and reported
    assert found["both"].label == "2.0" and found["both"].path == first / "both.json"
    assert "broken" in library.errors
    v1 = found["both"]
    (first / "both.json").write_text(json.dumps({"1": {**node, "inputs": {"filename_prefix": "b"}}, "2": info}))
    v2 = library.get("both")
    assert v2.hash != v1.hash and len(library.versions("both")) == 2
    assert library.get(f"both@{v1.version}").prompt == v1.prompt
    assert library.get(f"both@{v1.hash[:6]}").hash == v1.hash
    assert library.get("both@2.0").hash == v2.hash  # a human version names its newest recording
    with pytest.raises(WorkflowNotFound, match="not a known version"):
        library.get("both@3.0")
    with pytest.raises(WorkflowNotFound, match="no workflow named 'nope'"):
        library.get("nope")
    with pytest.raises(WorkflowNotFound, match="cannot be read"):
        library.get("broken")
    assert Library([first, second], store).get(f"both@{v1.version}").hash == v1.hash  # the store outlives objects
