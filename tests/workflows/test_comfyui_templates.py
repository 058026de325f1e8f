"""ComfyUI's own template suite as a test: every template of the pinned PyPI package `comfyui-workflow-templates-json`
(the test extra pins the version) whose models belong to a family latentgraph supports is converted from the
editor's format, validated and run, unchanged but for its size.

Which templates: the list comes from the package's `templates/index.json`, never from this file, so a new
version's templates are picked up by bumping the pin. A template is in scope when a main model it asks for (a file
for `checkpoints`, `diffusion_models` or `unet`, read from the nodes' `properties.models` and from the loader
widgets, subgraphs included) is SD1.x, SD2.x, SDXL (Turbo and refiner included) or SD3.x by its file name
(`FAMILY_RULES`), or when it is a `basic_*` template or `utility-gan_upscaler` that asks for no such model.

How it runs: every file a template asks for is built once per session as a tiny random model of that family (fixed
seeds; tests/nodes/sd/families_tiny.py and nodes/sd/tiny.py build them) and saved under the exact name and folder
the template asks for; a file of a kind that has no tiny builder here (a CLIP vision model, an SVD or Lotus model)
is not made, so the template stops at validation naming it. Input images the template loads are written as 64x64
random PNGs under the names it asks for. Before running, the converted prompt is shrunk generically (`shrink`),
because tiny models on a 2-core CPU: every width/height input above 64 becomes 64, every `steps` above 2 becomes 2
and the KSamplerAdvanced step window (`start_at_step`/`end_at_step` below the old step count) is scaled to the new
count, so a base/refiner hand-off still hands over. Nothing else of the graph changes.

Templates that cannot run yet are listed in `KNOWN_GAPS` with the stage they stop at and the node types nothing
here provides; they are strict expected failures, so a gap that closes fails the suite until its entry is removed,
and a gap that changes (another node missing) fails too. `python -m tests.workflows.test_comfyui_templates` prints
the table of workflows/COMPATIBILITY.md ("ComfyUI templates") from a real run.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.workflow_format import ConversionError, ui_to_api
from latentgraph.nodes import load_registry, make_environment
from PIL import Image

PACKAGE = "comfyui_workflow_templates_json"
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")
MAIN_FOLDERS = frozenset({"checkpoints", "diffusion_models", "unet"})
SUPPORTED_FAMILIES = frozenset({"sd1", "sd2", "sdxl", "sdxl_refiner", "sd3"})
MODEL_FREE_PATTERN = re.compile(r"^(basic_.*|utility-gan_upscaler)$")
# ComfyUI's model file names name their family; the first rule that matches decides.
FAMILY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"sd_?xl.*refiner", re.I), "sdxl_refiner"),
    (re.compile(r"sd_?xl", re.I), "sdxl"),
    (re.compile(r"sd3", re.I), "sd3"),
    (re.compile(r"v1-[45]|sd_?v?1[._-]?[45]\b|sd15", re.I), "sd1"),
    (re.compile(r"v2-[01]|sd_?v?2[._-]?[01]\b|sd21|512-base|768-v", re.I), "sd2"),
)
# The folder a loader's file widget reads from (for files not also listed in the node's `properties.models`).
LOADER_FOLDERS = {
    "CheckpointLoaderSimple": "checkpoints", "CheckpointLoader": "checkpoints",
    "ImageOnlyCheckpointLoader": "checkpoints", "unCLIPCheckpointLoader": "checkpoints",
    "ControlNetLoader": "controlnet", "DiffControlNetLoader": "controlnet", "UpscaleModelLoader": "upscale_models",
    "LoraLoader": "loras", "LoraLoaderModelOnly": "loras", "VAELoader": "vae", "UNETLoader": "diffusion_models",
    "CLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders", "TripleCLIPLoader": "text_encoders",
    "CLIPVisionLoader": "clip_vision", "StyleModelLoader": "style_models",
}
SIZE_INPUTS = ("width", "height", "target_width", "target_height")
SMALL_SIZE, FEW_STEPS = 64, 2


# ---------------------------------------------------------------- reading the package


@dataclass(frozen=True)
class ModelFile:
    folder: str
    name: str

    @property
    def family(self) -> str | None:
        return family_of(self.name)


@dataclass(frozen=True)
class Template:
    name: str
    models: frozenset[ModelFile]

    @property
    def families(self) -> frozenset[str]:
        return frozenset(m.family for m in self.models if m.folder in MAIN_FOLDERS and m.family is not None)

    @property
    def family(self) -> str:
        """The supported family the template belongs to ('none' for a model-free basic/utility template)."""
        supported = sorted(self.families & SUPPORTED_FAMILIES)
        return supported[0] if supported else "none"

    @property
    def in_scope(self) -> bool:
        if self.families & SUPPORTED_FAMILIES:
            return True
        no_main_model = not any(m.folder in MAIN_FOLDERS for m in self.models)
        only_upscalers = all(m.folder == "upscale_models" for m in self.models)
        return bool(MODEL_FREE_PATTERN.match(self.name)) and no_main_model and only_upscalers


def family_of(file_name: str) -> str | None:
    return next((family for pattern, family in FAMILY_RULES if pattern.search(file_name)), None)


def templates_folder() -> Path:
    return Path(str(resources.files(PACKAGE) / "templates"))


def load_template(name: str) -> dict[str, Any]:
    return json.loads((templates_folder() / f"{name}.json").read_text(encoding="utf-8"))


def _all_nodes(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from workflow.get("nodes") or []
    for subgraph in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from subgraph.get("nodes") or []


def requested_models(workflow: dict[str, Any]) -> frozenset[ModelFile]:
    """Every model file the template asks for: the nodes' `properties.models` (name and folder, as the editor's
    missing-model dialog reads them) and the file names in loader widgets."""
    folders: dict[str, str] = {}
    for node in _all_nodes(workflow):
        for entry in (node.get("properties") or {}).get("models") or []:
            if isinstance(entry, dict) and entry.get("name") and entry.get("directory"):
                folders[entry["name"]] = entry["directory"]
    for node in _all_nodes(workflow):
        folder = LOADER_FOLDERS.get(node.get("type", ""))
        values = node.get("widgets_values")
        for value in values if isinstance(values, list) else []:
            if folder and isinstance(value, str) and value.endswith(MODEL_SUFFIXES):
                folders.setdefault(value, folder)
    return frozenset(ModelFile(folder, name) for name, folder in folders.items())


@cache
def all_templates() -> tuple[Template, ...]:
    """Every template of the package's index, in the index's order."""
    index = json.loads((templates_folder() / "index.json").read_text(encoding="utf-8"))
    names = [entry["name"] for category in index for entry in category.get("templates", [])]
    return tuple(Template(name, requested_models(load_template(name))) for name in dict.fromkeys(names))


def in_scope_templates() -> list[Template]:
    return [t for t in all_templates() if t.in_scope]


# ---------------------------------------------------------------- what does not run yet, in one place


@dataclass(frozen=True)
class Gap:
    """Where a template stops today and why: at 'convert', `missing` are exactly the node types nothing here
    provides; at 'validate' or 'run', `expect` is a text the error must contain."""

    stage: str
    why: str
    missing: frozenset[str] = field(default_factory=frozenset)
    expect: str = ""


def _missing(why: str, *node_types: str) -> Gap:
    return Gap("convert", why, frozenset(node_types))


SD3_CONTROLNET = "SD3 ControlNets are not read yet: ControlNetLoader knows the UNet (SD1.x/SD2.x/SDXL) layouts only"
KNOWN_GAPS: dict[str, Gap] = {
    "sd3.5_large_canny_controlnet_example": Gap(
        "validate", SD3_CONTROLNET, expect="sd3.5_large_controlnet_canny.safetensors is an SD3 (MMDiT) ControlNet"),
    "sd3.5_large_blur": Gap(
        "validate", SD3_CONTROLNET, expect="sd3.5_large_controlnet_blur.safetensors is an SD3 (MMDiT) ControlNet"),
    "sd3.5_large_depth": _missing(
        "its depth map comes from a Lotus depth model (lotus-depth-d-v1-1 in diffusion_models, with "
        "vae-ft-mse-840000-ema-pruned), no supported family, through Lotus-specific nodes; and an SD3 "
        "ControlNet", "LotusConditioning"),
    "sdxl_revision_text_prompts": _missing("SDXL Revision needs a CLIP vision model (clip_vision_g) and its nodes",
                                           "CLIPVisionLoader", "CLIPVisionEncode", "unCLIPConditioning"),
    "txt_to_image_to_video": _missing(
        "its second stage is Stable Video Diffusion (svd_xt), no supported family, and writes a video",
        "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance", "ImageOnlyCheckpointLoader", "CreateVideo",
        "SaveVideo"),
    "utility-gan_upscaler": _missing("it upscales the frames of a video: no video nodes",
                                     "LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"),
    "basic_image_color_adjustment": _missing("GPU shader and curve-editor nodes of the new frontend",
                                             "GLSLShader", "ColorToRGBInt", "CustomCombo", "CurveEditor",
                                             "ImageHistogram"),
    "basic_datatype_conversion": _missing(
        "ComfyMathExpression's inputs grow with the graph (values.a, values.b, ...), which a node declared by its "
        "fields cannot take, and its expression language is ComfyUI's own", "ComfyMathExpression"),
}


class StageFailed(Exception):
    """A template stopped at `stage` ('convert', 'validate', 'run'); `missing` lists unknown node types."""

    def __init__(self, stage: str, message: str, missing: frozenset[str] = frozenset()) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage, self.missing = stage, missing


# ---------------------------------------------------------------- tiny models under the names asked for


def _write_sd1(path: Path, seed: int) -> None:
    from latentgraph.nodes.sd.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(path, seed=seed)


def _write_sd2(path: Path, seed: int) -> None:
    """SD2's layout: the tiny UNet/VAE with an OpenCLIP-style (gelu) text encoder, v-prediction."""
    from latentgraph.nodes.sd.checkpoint_save import save_single_file
    from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = build_tiny_pipeline_components(seed=seed)
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(**dict(parts.text_encoder.config.to_dict(), hidden_act="gelu"))).eval()
    save_single_file(parts.unet, parts.vae, text, path, prediction_type="v_prediction")


def _write_sdxl(path: Path, seed: int, refiner: bool = False) -> None:
    from latentgraph.nodes.sd.sdxl import save_sdxl_single_file

    from tests.nodes.sd.families_tiny import tiny_sdxl

    parts = tiny_sdxl(refiner=refiner, seed=seed)
    save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"], path)


def _write_sd3(path: Path, seed: int) -> None:
    from latentgraph.nodes.sd.sd3 import save_sd3_single_file

    from tests.nodes.sd.families_tiny import tiny_sd3

    parts = tiny_sd3(seed=seed, t5=False)
    save_sd3_single_file(parts["transformer"], parts["vae"],
                         {c: parts[c] for c in ("text_encoder", "text_encoder_2")}, path)


def _write_esrgan(path: Path, seed: int, name: str) -> None:
    """An ESRGAN (RRDB) file of the scale the name states (RealESRGAN_x4plus: 4), built with spandrel's class."""
    from latentgraph.nodes.sd.upscale_nodes import spandrel
    from safetensors.torch import save_file

    spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    found = re.search(r"x(\d)|(\d)x", name, re.I)
    scale = int(next(g for g in found.groups() if g)) if found else 4
    torch.manual_seed(seed)
    save_file(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict(), str(path))


def _write_controlnet(path: Path, seed: int, family: str) -> None:
    """A ControlNet in diffusers' single-file layout: for the UNet families made from the family's tiny UNet
    (`ControlNetModel.from_unet`), for SD3 an `SD3ControlNetModel` of the tiny SD3 transformer's shape (SD3.5's
    published ControlNets, as ComfyUI names them, use Stability's own layout; ComfyUI reads both). The zero-initialised
    output layers get random weights, so the ControlNet changes the result."""
    from diffusers import ControlNetModel, SD3ControlNetModel
    from safetensors.torch import save_file

    from tests.nodes.sd.families_tiny import WIDTH, tiny_sdxl

    torch.manual_seed(seed)
    if family == "sd3":
        net: torch.nn.Module = SD3ControlNetModel(
            sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=2 * WIDTH, out_channels=16,
            pos_embed_max_size=16, pos_embed_type=None, use_pos_embed=False, force_zeros_for_pooled_projection=False)
        zero = ("controlnet_blocks.", "pos_embed_input.")
    else:
        if family in ("sdxl", "sdxl_refiner"):
            unet = tiny_sdxl(refiner=family == "sdxl_refiner", seed=seed)["unet"]
        else:
            from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components

            unet = build_tiny_pipeline_components(seed=seed).unet
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
        zero = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith(zero):
                parameter.normal_(0.0, 0.2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


CHECKPOINT_WRITERS: dict[str, Callable[[Path, int], None]] = {
    "sd1": _write_sd1, "sd2": _write_sd2, "sdxl": _write_sdxl,
    "sdxl_refiner": lambda path, seed: _write_sdxl(path, seed, refiner=True), "sd3": _write_sd3,
}


def write_tiny_model(model: ModelFile, family: str, root: Path, built: dict[tuple[str, str], Path]) -> str | None:
    """Writes a tiny model for `model` (of `family` when its name states none) under root/models/<folder>/<name>;
    None when done, else why not. A second file of the same folder and family (SDXL base and Turbo, the SD3.5
    ControlNets) is a hard link to the first: one build per family and kind."""
    path = root / "models" / model.folder / model.name
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = re.search(r"x(\d)|(\d)x", model.name, re.I)
    writers: dict[str, Callable[[Path, int], None]] = {
        "upscale_models": lambda path, seed: _write_esrgan(path, seed, model.name),
        "checkpoints": CHECKPOINT_WRITERS.get(model.family or "", None),  # a main model's name must state its family
        "controlnet": (lambda path, seed: _write_controlnet(path, seed, model.family or family))
        if (model.family or family) in CHECKPOINT_WRITERS else None,
    }
    writer = writers.get(model.folder)
    if writer is None:
        return f"no tiny model of its kind here: {model.folder}/{model.name} (family {model.family or 'unknown'})"
    key = (model.folder, (scale[0] if scale else "x4") if model.folder == "upscale_models" else model.family or family)
    if key in built:
        path.hardlink_to(built[key])
    else:
        writer(path, zlib.crc32(repr(key).encode()) % 1000)
        built[key] = path
    return None


def write_input_images(prompt: dict[str, Any], input_dir: Path) -> None:
    """The images a template loads, as 64x64 random PNGs (seeded by name) under the names it asks for."""
    for node in prompt.values():
        name = node["inputs"].get("image")
        if node["class_type"] in ("LoadImage", "LoadImageMask") and isinstance(name, str):
            target = input_dir / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                Image.fromarray(rng.integers(0, 256, (SMALL_SIZE, SMALL_SIZE, 3), dtype=np.uint8)).save(target)


# ---------------------------------------------------------------- convert, shrink, validate, run


def shrink(prompt: dict[str, Any]) -> dict[str, Any]:
    """The same graph at most 64 pixels wide and high and at most 2 steps (see the module docstring)."""
    for node in prompt.values():
        inputs = node["inputs"]
        for key in SIZE_INPUTS:
            if isinstance(inputs.get(key), int) and inputs[key] > SMALL_SIZE:
                inputs[key] = SMALL_SIZE
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > FEW_STEPS:
            inputs["steps"] = FEW_STEPS
            for key in ("start_at_step", "end_at_step"):
                if isinstance(inputs.get(key), int) and inputs[key] < steps:
                    inputs[key] = inputs[key] * FEW_STEPS // steps
    return prompt


def convert(executor: Executor, template: Template) -> dict[str, Any]:
    try:
        return ui_to_api(load_template(template.name), executor.registry.object_info(executor.env))
    except ConversionError as exc:
        raise StageFailed("convert", str(exc), frozenset(kind for _, kind in exc.unknown)) from exc


def run_template(executor: Executor, template: Template) -> list[Path]:
    """Converts, shrinks, validates and runs one template; the image files its output nodes wrote."""
    prompt = shrink(convert(executor, template))
    write_input_images(prompt, executor.env.folders.input_dir)
    validation = executor.validate(prompt, None)
    if not validation.ok:
        raise StageFailed("validate", validation.summary())
    result = executor.run(prompt)
    if result.status != "success":
        error = result.error or {}
        raise StageFailed("run", f"node {error.get('node_id')} ({error.get('node_type')}): "
                                 f"{error.get('exception_message', result.status)}")
    folders = executor.env.folders
    roots = {"output": folders.output_dir, "temp": folders.temp_dir, "input": folders.input_dir}
    return [roots[image["type"]] / image["subfolder"] / image["filename"]
            for ui in result.outputs.values() for image in ui.get("images", [])]


def make_suite(root: Path) -> tuple[Executor, dict[str, str]]:
    """An executor whose models folder holds a tiny model for every file an in-scope template asks for; and why
    each file that could not be built was not."""
    unbuilt: dict[str, str] = {}
    wanted = {m: t.family for t in in_scope_templates() for m in t.models}
    built: dict[tuple[str, str], Path] = {}
    for model in sorted(wanted, key=lambda m: (m.folder, m.name)):
        reason = write_tiny_model(model, wanted[model], root, built)
        if reason is not None:
            unbuilt[model.name] = reason
    return Executor(load_registry(plugins=False), make_environment(root)), unbuilt


# ---------------------------------------------------------------- the tests


def _param(template: Template) -> Any:
    gap = KNOWN_GAPS.get(template.name)
    marks = [pytest.mark.xfail(strict=True, raises=StageFailed, reason=f"stops at {gap.stage}: {gap.why}"
                               + (f"; missing node types: {', '.join(sorted(gap.missing))}" if gap.missing else ""))
             ] if gap else []
    return pytest.param(template, id=template.name, marks=marks)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a busy 2-core machine
    executor, _ = make_suite(tmp_path_factory.mktemp("templates"))
    yield executor
    torch.set_num_threads(threads)


def test_the_package_has_in_scope_templates_of_every_kind() -> None:
    """The selection reads real metadata: SDXL, SDXL Turbo and refiner, SD3.5 (with ControlNet) and the model-free
    basic templates of the pinned version are all found, and no known gap names a template that is not in scope."""
    chosen = {t.name: t for t in in_scope_templates()}
    families = {t.family for t in chosen.values()}
    assert {"sdxl", "sd3", "none"} <= families
    assert "sdxlturbo_example" in chosen and "sd3.5_large_canny_controlnet_example" in chosen
    assert any(m.family == "sdxl_refiner" for t in chosen.values() for m in t.models)
    assert all(name in chosen for name in KNOWN_GAPS), set(KNOWN_GAPS) - set(chosen)
    assert not any(t.family == "none" and t.families for t in chosen.values())


@pytest.mark.slow
@pytest.mark.parametrize("template", [_param(t) for t in in_scope_templates()])
def test_template_converts_validates_and_runs(suite: Executor, template: Template) -> None:
    gap = KNOWN_GAPS.get(template.name)
    try:
        files = run_template(suite, template)
    except StageFailed as failure:
        if gap is not None and (failure.stage != gap.stage or failure.missing != gap.missing
                                or gap.expect not in str(failure)):
            raise AssertionError(f"KNOWN_GAPS[{template.name!r}] is out of date: it says {gap.stage} "
                                 f"(missing {sorted(gap.missing)}, {gap.expect!r}), now {failure}") from failure
        raise
    assert files, "the template's output nodes saved no image"
    flat = []
    for path in files:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert min(pixels.shape[:2]) >= SMALL_SIZE // 8, path
        if pixels.std() == 0:
            flat.append(path)
    # A generated image is never flat; a model-free template may preview a flat input (a black EmptyImage, a
    # solid mask) beside the images it makes, but not only flat ones.
    assert not flat if template.family != "none" else len(flat) < len(files), flat


# ---------------------------------------------------------------- the COMPATIBILITY.md table


def compatibility_table(root: Path) -> str:
    executor, unbuilt = make_suite(root)
    rows = ["| template | family | converts | validates | runs | why not |", "|---|---|---|---|---|---|"]
    for template in in_scope_templates():
        stage, why = "done", ""
        try:
            run_template(executor, template)
        except StageFailed as failure:
            stage = failure.stage
            gap = KNOWN_GAPS.get(template.name)
            missing = f"missing node types: {', '.join(sorted(failure.missing))}" if failure.missing else str(failure)
            why = f"{gap.why}; {missing}" if gap else missing
            files = [unbuilt[m.name] for m in template.models if m.name in unbuilt]
            why += "".join(f"; {reason}" for reason in files)
        order = ["convert", "validate", "run", "done"]
        marks = ["yes" if order.index(stage) > i else "no" for i in range(3)]
        why = " ".join(why.replace("|", "/").split())
        rows.append(f"| {template.name} | {template.family} | {' | '.join(marks)} | {why} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import os
    import tempfile

    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        sys.stdout.write(compatibility_table(Path(folder)) + "\n")
