"""UI (litegraph) <-> API format conversion: one test per rule, on hand-written editor files in tests/server/data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from latentgraph.engine.workflow_format import ConversionError, api_to_ui, is_ui_format, ui_to_api, widgets_to_inputs

DATA = Path(__file__).parent / "data"
WORKFLOWS = sorted((Path(__file__).parents[2] / "workflows").glob("*.json"))


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def object_info() -> dict:
    return load("object_info.json")


def inputs_of(prompt: dict) -> dict:
    return {node_id: node["inputs"] for node_id, node in prompt.items()}


def test_is_ui_format_tells_the_formats_apart() -> None:
    assert is_ui_format(load("ui_txt2img_v04.json"))
    assert is_ui_format(load("ui_txt2img_v1.json"))
    assert not is_ui_format({"1": {"class_type": "SaveImage", "inputs": {}}})
    assert not is_ui_format([1, 2])


def test_v04_links_widgets_and_the_seed_control_value(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_txt2img_v04.json"), object_info)
    assert prompt["3"] == {
        "class_type": "KSampler",
        "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                   "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                   "latent_image": ["5", 0]},
        "_meta": {"title": "KSampler"},
    }
    assert prompt["6"]["_meta"] == {"title": "Positive"}
    assert prompt["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "ComfyUI"}


def test_notes_and_groups_never_reach_the_prompt(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_txt2img_v04.json"), object_info)
    assert sorted(prompt, key=int) == ["3", "4", "5", "6", "7", "8", "9"]


def test_schema_version_1_link_objects_and_widget_inputs(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_txt2img_v1.json"), object_info)
    assert prompt["3"]["inputs"]["seed"] == 42 and prompt["3"]["inputs"]["sampler_name"] == "ddim"
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert prompt["5"]["inputs"] == {"width": 64, "height": 96, "batch_size": 2}


def test_both_versions_of_one_graph_have_the_same_links(object_info: dict) -> None:
    def links(prompt: dict) -> dict:
        return {(k, n): v for k, node in prompt.items() for n, v in node["inputs"].items() if isinstance(v, list)}

    old = ui_to_api(load("ui_txt2img_v04.json"), object_info)
    new = ui_to_api(load("ui_txt2img_v1.json"), object_info)
    assert links(old) == links(new)


def test_bypassed_node_passes_its_input_through(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_mute_bypass.json"), object_info)
    assert "2" not in prompt
    assert prompt["3"]["inputs"] == {"images": ["1", 0], "filename_prefix": "bypass"}


def test_muted_node_is_left_out_with_the_links_from_it(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_mute_bypass.json"), object_info)
    assert "4" not in prompt
    assert prompt["5"] == {"class_type": "PreviewImage", "inputs": {}, "_meta": {"title": "PreviewImage"}}


def test_load_image_upload_value_is_dropped(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_mute_bypass.json"), object_info)
    assert prompt["1"]["inputs"] == {"image": "cat.png"}


def test_reroute_is_followed(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_reroute_primitive.json"), object_info)
    assert "10" not in prompt
    assert prompt["14"]["inputs"]["model"] == ["1", 0]


def test_bypass_matches_by_type_not_by_position(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_reroute_primitive.json"), object_info)
    assert "11" not in prompt
    assert prompt["12"]["inputs"]["clip"] == ["1", 1]


def test_primitive_node_value_flows_into_the_widget(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_reroute_primitive.json"), object_info)
    assert "13" not in prompt
    assert prompt["14"]["inputs"]["seed"] == 1234
    assert prompt["14"]["inputs"]["denoise"] == 0.75


def test_subgraphs_are_flattened_with_outer_inner_ids(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_subgraph.json"), object_info)
    assert set(prompt) == {"1", "2:5", "2:6", "3", "4:7:1"}
    assert prompt["2:5"]["inputs"] == {"text": "a castle", "clip": ["1", 1]}
    assert prompt["2:6"]["inputs"] == {"text": "inner only", "clip": ["1", 1]}
    assert prompt["3"]["inputs"]["positive"] == ["2:5", 0]
    assert prompt["3"]["inputs"]["latent_image"] == ["4:7:1", 0]
    assert prompt["4:7:1"]["inputs"] == {"width": 32, "height": 48, "batch_size": 1}


def test_linked_subgraph_input_replaces_the_instance_widget(object_info: dict) -> None:
    workflow = load("ui_subgraph.json")
    workflow["nodes"].append({"id": 9, "type": "PrimitiveNode", "mode": 0, "widgets_values": ["from outside"],
                              "outputs": [{"name": "STRING", "type": "STRING", "links": [9]}]})
    workflow["links"].append({"id": 9, "origin_id": 9, "origin_slot": 0, "target_id": 2, "target_slot": 1,
                              "type": "STRING"})
    workflow["nodes"][1]["inputs"][1]["link"] = 9
    prompt = ui_to_api(workflow, object_info)
    assert prompt["2:5"]["inputs"]["text"] == "from outside"


def test_muted_subgraph_instance_mutes_its_inside(object_info: dict) -> None:
    workflow = load("ui_subgraph.json")
    workflow["nodes"][2]["mode"] = 2
    prompt = ui_to_api(workflow, object_info)
    assert not any(node_id.startswith("4:") for node_id in prompt)
    assert "latent_image" not in prompt["3"]["inputs"]


def test_widgets_values_named_wins(object_info: dict) -> None:
    node = {"id": 5, "type": "EmptyLatentImage", "widgets_values": [1, 2, 3],
            "widgets_values_named": {"width": 640, "height": 384, "batch_size": 2}}
    assert widgets_to_inputs(node, object_info["EmptyLatentImage"], frozenset()) == \
        {"width": 640, "height": 384, "batch_size": 2}


def test_files_that_skip_linked_widgets_are_read_too(object_info: dict) -> None:
    node = {"id": 3, "type": "KSampler", "widgets_values": [20, 8, "euler", "normal", 1]}
    assert widgets_to_inputs(node, object_info["KSampler"], frozenset({"seed"})) == \
        {"steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1}


def test_control_value_is_optional(object_info: dict) -> None:
    node = {"id": 3, "type": "KSampler", "widgets_values": [5, 20, 8, "euler", "normal", 1]}
    assert widgets_to_inputs(node, object_info["KSampler"], frozenset())["steps"] == 20


def test_noise_seed_has_a_control_value_by_name(object_info: dict) -> None:
    node = {"id": 1, "type": "KSamplerAdvanced",
            "widgets_values": ["enable", 77, "randomize", 12, 6, "euler", "karras", 0, 10000, "disable"]}
    values = widgets_to_inputs(node, object_info["KSamplerAdvanced"], frozenset())
    assert values["noise_seed"] == 77 and values["steps"] == 12 and values["return_with_leftover_noise"] == "disable"


def test_force_input_is_a_socket_not_a_widget(object_info: dict) -> None:
    node = {"id": 1, "type": "StringJoin", "widgets_values": ["b", " | "]}
    assert widgets_to_inputs(node, object_info["StringJoin"], frozenset()) == {"b": "b", "sep": " | "}


def test_list_values_are_wrapped(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][4]["widgets_values"] = [["a", "b"]]
    assert ui_to_api(workflow, object_info)["7"]["inputs"]["text"] == {"__value__": ["a", "b"]}


def test_missing_trailing_widget_takes_its_default(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][0]["widgets_values"] = [1, "fixed", 20, 8, "euler", "normal"]
    assert ui_to_api(workflow, object_info)["3"]["inputs"]["denoise"] == 1.0


def test_unknown_node_type_error_names_the_node(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][6]["type"] = "SaveVideoMagic"
    with pytest.raises(ConversionError, match=r"node 9 \(SaveVideoMagic\): unknown node type") as info:
        ui_to_api(workflow, object_info)
    assert info.value.node_id == "9" and info.value.node_type == "SaveVideoMagic"


def test_every_unknown_node_type_is_reported_at_once(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][6]["type"] = "SaveVideoMagic"
    workflow["nodes"][2]["type"] = "EmptyHunyuanLatent"
    with pytest.raises(ConversionError, match=r"also unknown: node 9 \(SaveVideoMagic\)") as info:
        ui_to_api(workflow, object_info)
    assert info.value.unknown == [("5", "EmptyHunyuanLatent"), ("9", "SaveVideoMagic")]


def test_widget_count_mismatch_error_names_the_node(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][2]["widgets_values"] = [512, 512, 1, 7, 8]
    with pytest.raises(ConversionError, match=r"node 5 \(EmptyLatentImage\): has 5 widget values"):
        ui_to_api(workflow, object_info)


def test_dangling_link_error_names_the_node(object_info: dict) -> None:
    workflow = load("ui_txt2img_v04.json")
    workflow["nodes"][5]["inputs"][1]["link"] = 99
    with pytest.raises(ConversionError, match=r"node 8 \(VAEDecode\): input refers to link 99"):
        ui_to_api(workflow, object_info)


def test_inner_subgraph_error_uses_the_flattened_id(object_info: dict) -> None:
    workflow = load("ui_subgraph.json")
    workflow["definitions"]["subgraphs"][2]["nodes"][0]["widgets_values"] = [1, 2, 3, 4, 5]
    with pytest.raises(ConversionError, match=r"node 4:7:1 \(EmptyLatentImage\)"):
        ui_to_api(workflow, object_info)


def test_api_to_ui_lays_out_columns_by_depth(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_txt2img_v04.json"), object_info)
    ui = api_to_ui(prompt, object_info)
    x = {node["id"]: node["pos"][0] for node in ui["nodes"]}
    assert x[4] < x[6] == x[7] < x[3] < x[8] < x[9]
    assert x[5] == x[6]
    column = sorted((n for n in ui["nodes"] if n["pos"][0] == x[6]), key=lambda n: n["pos"][1])
    for upper, lower in zip(column, column[1:]):
        assert upper["pos"][1] + upper["size"][1] <= lower["pos"][1]
    ksampler = next(n for n in ui["nodes"] if n["id"] == 3)
    assert ksampler["widgets_values"] == [156680208700286, "fixed", 20, 8, "euler", "normal", 1]
    assert ui["last_link_id"] == len(ui["links"]) == 9


@pytest.mark.parametrize("name", ["ui_txt2img_v04.json", "ui_txt2img_v1.json", "ui_reroute_primitive.json",
                                  "ui_mute_bypass.json"])
def test_api_ui_api_round_trip_of_the_fixtures(name: str, object_info: dict) -> None:
    prompt = ui_to_api(load(name), object_info)
    ui = api_to_ui(copy.deepcopy(prompt), object_info)
    assert ui_to_api(json.loads(json.dumps(ui)), object_info) == prompt


def test_flattened_ids_are_renumbered_keeping_the_links(object_info: dict) -> None:
    prompt = ui_to_api(load("ui_subgraph.json"), object_info)
    back = ui_to_api(api_to_ui(prompt, object_info), object_info)
    assert all(node_id.isdigit() for node_id in back)
    assert back["3"]["inputs"]["positive"] == back["3"]["inputs"]["negative"]
    assert back[back["3"]["inputs"]["positive"][0]]["inputs"]["text"] == "a castle"
    assert back[back["3"]["inputs"]["latent_image"][0]]["inputs"] == {"width": 32, "height": 48, "batch_size": 1}


def _real_object_info(tmp_path: Path) -> dict:
    from latentgraph.nodes import load_registry, make_environment

    return load_registry().object_info(make_environment(tmp_path))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflows_round_trip(path: Path, tmp_path: Path) -> None:
    object_info = _real_object_info(tmp_path)
    prompt = json.loads(path.read_text())
    back = ui_to_api(api_to_ui(prompt, object_info), object_info)
    assert inputs_of(back) == inputs_of(prompt)
    assert {k: v["class_type"] for k, v in back.items()} == {k: v["class_type"] for k, v in prompt.items()}
