"""object_info of the everyday nodes against ComfyUI's own declarations, transcribed here from ComfyUI's nodes.py,
comfy_extras/nodes_mask.py, nodes_latent.py, nodes_images.py, nodes_post_processing.py, nodes_upscale_model.py and
nodes_primitive.py (and its NODE_DISPLAY_NAME_MAPPINGS): input names and order, types or choices, defaults,
min/max/step, which inputs are optional, outputs, category and display name. The editor builds its widgets from
these, and saved workflows list widget values in this order, so any drift breaks shared workflows.

Display names are ComfyUI's current ones, which the editor this project pins (comfyui-frontend-package, whose
English node definitions are generated from ComfyUI's object_info) ships; `test_display_names_are_the_editors`
reads them from that package for every node the editor knows, so a pin bump shows any rename."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from latentgraph.nodes import load_registry, make_environment

R = 16384  # MAX_RESOLUTION
LATENT, IMAGE, MASK, COND = "LATENT", "IMAGE", "MASK", "CONDITIONING"
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def i(default, lo, hi, step=None):
    return ("INT", {"default": default, "min": lo, "max": hi, **({"step": step} if step is not None else {})})


def f(default, lo, hi, step=None):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, **({"step": step} if step is not None else {})})


def b(default):
    return ("BOOLEAN", {"default": default})


SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True})
CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def SIGMA(default, hi):  # noqa: N802 - reads as a declaration, like i/f/b
    return ("FLOAT", {"default": default, "min": 0.0, "max": hi, "step": 0.01, "round": False})


# name: (category, display name (None: the class name), outputs, required inputs, optional inputs)
COMFYUI = {
    "LatentComposite": ("latent", "Latent Composite", [LATENT], {
        "samples_to": LATENT, "samples_from": LATENT, "x": i(0, 0, R, 8), "y": i(0, 0, R, 8),
        "feather": i(0, 0, R, 8)}, {}),
    "LatentCompositeMasked": ("latent", "Latent Composite Masked", [LATENT], {
        "destination": LATENT, "source": LATENT, "x": i(0, 0, R, 8), "y": i(0, 0, R, 8),
        "resize_source": b(False)}, {"mask": MASK}),
    "LatentBlend": ("_for_testing", "Latent Blend", [LATENT], {
        "samples1": LATENT, "samples2": LATENT, "blend_factor": f(0.5, 0, 1, 0.01)}, {}),
    "LatentFlip": ("latent/transform", "Flip Latent", [LATENT], {
        "samples": LATENT, "flip_method": ["x-axis: vertically", "y-axis: horizontally"]}, {}),
    "LatentRotate": ("latent/transform", "Rotate Latent", [LATENT], {
        "samples": LATENT, "rotation": ["none", "90 degrees", "180 degrees", "270 degrees"]}, {}),
    "LatentCrop": ("latent/transform", "Crop Latent", [LATENT], {
        "samples": LATENT, "width": i(512, 64, R, 8), "height": i(512, 64, R, 8), "x": i(0, 0, R, 8),
        "y": i(0, 0, R, 8)}, {}),
    "LatentFromBatch": ("latent/batch", "Get Latent From Batch", [LATENT], {
        "samples": LATENT, "batch_index": i(0, 0, 63), "length": i(1, 1, 64)}, {}),
    "RepeatLatentBatch": ("latent/batch", "Repeat Latent Batch", [LATENT], {
        "samples": LATENT, "amount": i(1, 1, 64)}, {}),
    "LatentBatch": ("latent/batch", "Batch Latents (DEPRECATED)", [LATENT], {
        "samples1": LATENT, "samples2": LATENT}, {}),
    "SaveLatent": ("_for_testing", "Save Latent", [], {
        "samples": LATENT, "filename_prefix": ("STRING", {"default": "latents/ComfyUI"})}, {}),
    "ImageScaleBy": ("image/upscaling", "Upscale Image By", [IMAGE], {
        "image": IMAGE, "upscale_method": UPSCALE, "scale_by": f(1.0, 0.01, 8.0, 0.01)}, {}),
    "ImageCrop": ("image/transform", "Crop Image (DEPRECATED)", [IMAGE], {
        "image": IMAGE, "width": i(512, 1, R, 1), "height": i(512, 1, R, 1), "x": i(0, 0, R, 1),
        "y": i(0, 0, R, 1)}, {}),
    "ImagePadForOutpaint": ("image", "Pad Image for Outpainting", [IMAGE, MASK], {
        "image": IMAGE, "left": i(0, 0, R, 8), "top": i(0, 0, R, 8), "right": i(0, 0, R, 8),
        "bottom": i(0, 0, R, 8), "feathering": i(40, 0, R, 1)}, {}),
    "ImageCompositeMasked": ("image", "Image Composite Masked", [IMAGE], {
        "destination": IMAGE, "source": IMAGE, "x": i(0, 0, R, 1), "y": i(0, 0, R, 1),
        "resize_source": b(False)}, {"mask": MASK}),
    "ImageBlend": ("image/postprocessing", "Blend Images", [IMAGE], {
        "image1": IMAGE, "image2": IMAGE, "blend_factor": f(0.5, 0.0, 1.0, 0.01),
        "blend_mode": ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]}, {}),
    "ImageBlur": ("image/postprocessing", "Blur Image", [IMAGE], {
        "image": IMAGE, "blur_radius": i(1, 1, 31, 1), "sigma": f(1.0, 0.1, 10.0, 0.1)}, {}),
    "ImageSharpen": ("image/postprocessing", "Sharpen Image", [IMAGE], {
        "image": IMAGE, "sharpen_radius": i(1, 1, 31, 1), "sigma": f(1.0, 0.1, 10.0, 0.01),
        "alpha": f(1.0, 0.0, 5.0, 0.01)}, {}),
    "EmptyImage": ("image", "Empty Image", [IMAGE], {
        "width": i(512, 1, R, 1), "height": i(512, 1, R, 1), "batch_size": i(1, 1, 4096),
        "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"})}, {}),
    "MaskToImage": ("mask", "Convert Mask to Image", [IMAGE], {"mask": MASK}, {}),
    "ImageToMask": ("mask", "Convert Image to Mask", [MASK], {
        "image": IMAGE, "channel": ["red", "green", "blue", "alpha"]}, {}),
    "SolidMask": ("mask", "Create Solid Mask", [MASK], {
        "value": f(1.0, 0.0, 1.0, 0.01), "width": i(512, 1, R, 1), "height": i(512, 1, R, 1)}, {}),
    "InvertMask": ("mask", "Invert Mask", [MASK], {"mask": MASK}, {}),
    "CropMask": ("mask", "Crop Mask", [MASK], {
        "mask": MASK, "x": i(0, 0, R, 1), "y": i(0, 0, R, 1), "width": i(512, 1, R, 1),
        "height": i(512, 1, R, 1)}, {}),
    "MaskComposite": ("mask", "Combine Masks", [MASK], {
        "destination": MASK, "source": MASK, "x": i(0, 0, R, 1), "y": i(0, 0, R, 1),
        "operation": ["multiply", "add", "subtract", "and", "or", "xor"]}, {}),
    "FeatherMask": ("mask", "Feather Mask", [MASK], {
        "mask": MASK, "left": i(0, 0, R, 1), "top": i(0, 0, R, 1), "right": i(0, 0, R, 1),
        "bottom": i(0, 0, R, 1)}, {}),
    "GrowMask": ("mask", "Grow Mask", [MASK], {
        "mask": MASK, "expand": i(0, -R, R, 1), "tapered_corners": b(True)}, {}),
    "ThresholdMask": ("mask", "Threshold Mask", [MASK], {"mask": MASK, "value": f(0.5, 0.0, 1.0, 0.01)}, {}),
    "ConditioningZeroOut": ("advanced/conditioning", "Conditioning Zero Out", [COND], {"conditioning": COND}, {}),
    "ConditioningConcat": ("conditioning", "Conditioning (Concat)", [COND], {
        "conditioning_to": COND, "conditioning_from": COND}, {}),
    "ConditioningAverage": ("conditioning", "Conditioning (Average)", [COND], {
        "conditioning_to": COND, "conditioning_from": COND,
        "conditioning_to_strength": f(1.0, 0.0, 1.0, 0.01)}, {}),
    "ConditioningSetAreaStrength": ("conditioning", "Conditioning (Set Area Strength)", [COND], {
        "conditioning": COND, "strength": f(1.0, 0.0, 10.0, 0.01)}, {}),
    "ConditioningSetArea": ("conditioning", "Conditioning (Set Area)", [COND], {
        "conditioning": COND, "width": i(64, 64, R, 8), "height": i(64, 64, R, 8), "x": i(0, 0, R, 8),
        "y": i(0, 0, R, 8), "strength": f(1.0, 0.0, 10.0, 0.01)}, {}),
    "ConditioningSetAreaPercentage": ("conditioning", "Conditioning (Set Area with Percentage)", [COND], {
        "conditioning": COND, "width": f(1.0, 0, 1.0, 0.01), "height": f(1.0, 0, 1.0, 0.01),
        "x": f(0, 0, 1.0, 0.01), "y": f(0, 0, 1.0, 0.01), "strength": f(1.0, 0.0, 10.0, 0.01)}, {}),
    "ConditioningSetMask": ("conditioning", "Conditioning (Set Mask)", [COND], {
        "conditioning": COND, "mask": MASK, "strength": f(1.0, 0.0, 10.0, 0.01),
        "set_cond_area": ["default", "mask bounds"]}, {}),
    "ConditioningSetTimestepRange": ("advanced/conditioning", None, [COND], {
        "conditioning": COND, "start": f(0.0, 0.0, 1.0, 0.001), "end": f(1.0, 0.0, 1.0, 0.001)}, {}),
    "FreeU": ("model_patches/unet", None, ["MODEL"], {
        "model": "MODEL", "b1": f(1.1, 0.0, 10.0, 0.01), "b2": f(1.2, 0.0, 10.0, 0.01), "s1": f(0.9, 0.0, 10.0, 0.01),
        "s2": f(0.2, 0.0, 10.0, 0.01)}, {}),
    "FreeU_V2": ("model_patches/unet", None, ["MODEL"], {
        "model": "MODEL", "b1": f(1.3, 0.0, 10.0, 0.01), "b2": f(1.4, 0.0, 10.0, 0.01), "s1": f(0.9, 0.0, 10.0, 0.01),
        "s2": f(0.2, 0.0, 10.0, 0.01)}, {}),
    "RescaleCFG": ("advanced/model", None, ["MODEL"], {"model": "MODEL", "multiplier": f(0.7, 0.0, 1.0, 0.01)}, {}),
    "LoraLoaderModelOnly": ("loaders", "Load LoRA", ["MODEL"], {
        "model": "MODEL", "lora_name": [], "strength_model": f(1.0, -100.0, 100.0, 0.01)}, {}),
    "CLIPTextEncodeSD3": ("advanced/conditioning", "CLIP Text Encode (SD3)", [COND], {
        "clip": "CLIP", "clip_l": ("STRING", {"multiline": True, "dynamicPrompts": True}),
        "clip_g": ("STRING", {"multiline": True, "dynamicPrompts": True}),
        "t5xxl": ("STRING", {"multiline": True, "dynamicPrompts": True}), "empty_padding": ["none", "empty_prompt"]},
        {}),
    "InpaintModelConditioning": ("conditioning/inpaint", None, [COND, COND, LATENT], {
        "positive": COND, "negative": COND, "vae": "VAE", "pixels": IMAGE, "mask": MASK,
        "noise_mask": b(True)}, {}),
    "UpscaleModelLoader": ("loaders", "Load Upscale Model", ["UPSCALE_MODEL"], {"model_name": []}, {}),
    "ImageUpscaleWithModel": ("image/upscaling", "Upscale Image (using Model)", [IMAGE], {
        "upscale_model": "UPSCALE_MODEL", "image": IMAGE}, {}),
    "VAEDecodeTiled": ("_for_testing", "VAE Decode (Tiled)", [IMAGE], {
        "samples": LATENT, "vae": "VAE", "tile_size": i(512, 64, 4096, 32), "overlap": i(64, 0, 4096, 32),
        "temporal_size": i(64, 8, 4096, 4), "temporal_overlap": i(8, 4, 4096, 4)}, {}),
    "VAEEncodeTiled": ("_for_testing", "VAE Encode (Tiled)", [LATENT], {
        "pixels": IMAGE, "vae": "VAE", "tile_size": i(512, 64, 4096, 64), "overlap": i(64, 0, 4096, 32),
        "temporal_size": i(64, 8, 4096, 4), "temporal_overlap": i(8, 4, 4096, 4)}, {}),
    "SaveAnimatedWEBP": ("image/animation", "Save Animated WEBP", [], {
        "images": IMAGE, "filename_prefix": ("STRING", {"default": "ComfyUI"}), "fps": f(6.0, 0.01, 1000.0, 0.01),
        "lossless": b(True), "quality": i(80, 0, 100), "method": ["default", "fastest", "slowest"]}, {}),
    "SaveAnimatedPNG": ("image/animation", "Save Animated PNG", [], {
        "images": IMAGE, "filename_prefix": ("STRING", {"default": "ComfyUI"}), "fps": f(6.0, 0.01, 1000.0, 0.01),
        "compress_level": i(4, 0, 9)}, {}),
    "PrimitiveInt": ("utils/primitive", "Int", ["INT"], {
        "value": ("INT", {"min": -sys.maxsize, "max": sys.maxsize})}, {}),
    "PrimitiveFloat": ("utils/primitive", "Float", ["FLOAT"], {
        "value": ("FLOAT", {"min": -sys.maxsize, "max": sys.maxsize})}, {}),
    "PrimitiveString": ("utils/primitive", "Text", ["STRING"], {"value": ("STRING", {})}, {}),
    "PrimitiveStringMultiline": ("utils/primitive", "Text (Multiline)", ["STRING"], {
        "value": ("STRING", {"multiline": True})}, {}),
    "PrimitiveBoolean": ("utils/primitive", "Boolean", ["BOOLEAN"], {"value": ("BOOLEAN", {})}, {}),
    "RepeatImageBatch": ("image/batch", "Repeat Image Batch", [IMAGE], {"image": IMAGE, "amount": i(1, 1, 4096)}, {}),
    "ImageFromBatch": ("image/batch", "Get Image from Batch", [IMAGE], {
        "image": IMAGE, "batch_index": i(0, 0, 4095), "length": i(1, 1, 4096)}, {}),
    "ImageColorToMask": ("mask", "Convert Image Color to Mask", [MASK], {
        "image": IMAGE, "color": i(0, 0, 0xFFFFFF, 1)}, {}),
    "LatentAdd": ("latent/advanced", None, [LATENT], {"samples1": LATENT, "samples2": LATENT}, {}),
    "LatentSubtract": ("latent/advanced", None, [LATENT], {"samples1": LATENT, "samples2": LATENT}, {}),
    "LatentMultiply": ("latent/advanced", None, [LATENT], {
        "samples": LATENT, "multiplier": f(1.0, -10.0, 10.0, 0.01)}, {}),
    "LatentInterpolate": ("latent/advanced", None, [LATENT], {
        "samples1": LATENT, "samples2": LATENT, "ratio": f(1.0, 0.0, 1.0, 0.01)}, {}),
    "LatentBatchSeedBehavior": ("latent/advanced", None, [LATENT], {
        "samples": LATENT, "seed_behavior": ["random", "fixed"]}, {}),
    "ModelSamplingDiscrete": ("advanced/model", None, ["MODEL"], {
        "model": "MODEL", "sampling": ["eps", "v_prediction", "lcm", "x0", "img_to_img"], "zsnr": b(False)}, {}),
    "TorchCompileModel": ("_for_testing", None, ["MODEL"], {"model": "MODEL", "backend": ["inductor", "cudagraphs"]},
                          {}),
    # nodes.py's ControlNet nodes and comfy_extras/nodes_canny.py
    "ControlNetLoader": ("loaders", "Load ControlNet Model", ["CONTROL_NET"], {"control_net_name": []}, {}),
    "DiffControlNetLoader": ("loaders", "Load ControlNet Model (diff)", ["CONTROL_NET"], {
        "model": "MODEL", "control_net_name": []}, {}),
    "ControlNetApply": ("conditioning/controlnet", "Apply ControlNet (DEPRECATED)", [COND], {
        "conditioning": COND, "control_net": "CONTROL_NET", "image": IMAGE, "strength": f(1.0, 0.0, 10.0, 0.01)},
        {}),
    "ControlNetApplyAdvanced": ("conditioning/controlnet", "Apply ControlNet", [COND, COND], {
        "positive": COND, "negative": COND, "control_net": "CONTROL_NET", "image": IMAGE,
        "strength": f(1.0, 0.0, 10.0, 0.01), "start_percent": f(0.0, 0.0, 1.0, 0.001),
        "end_percent": f(1.0, 0.0, 1.0, 0.001)}, {"vae": "VAE"}),
    "Canny": ("image/preprocessors", "Detect Edges (Canny)", [IMAGE], {
        "image": IMAGE, "low_threshold": f(0.4, 0.01, 0.99, 0.01), "high_threshold": f(0.8, 0.01, 0.99, 0.01)}, {}),
    # comfy_extras/nodes_custom_sampler.py
    "KSamplerSelect": ("sampling/samplers", None, ["SAMPLER"], {"sampler_name": []}, {}),
    "SamplerCustom": ("sampling/custom_sampling", None, [LATENT, LATENT], {
        "model": "MODEL", "add_noise": b(True), "noise_seed": SEED, "cfg": CFG, "positive": COND, "negative": COND,
        "sampler": "SAMPLER", "sigmas": "SIGMAS", "latent_image": LATENT}, {}),
    "SamplerCustomAdvanced": ("sampling/custom_sampling", None, [LATENT, LATENT], {
        "noise": "NOISE", "guider": "GUIDER", "sampler": "SAMPLER", "sigmas": "SIGMAS", "latent_image": LATENT}, {}),
    "BasicScheduler": ("sampling/schedulers", None, ["SIGMAS"], {
        "model": "MODEL", "scheduler": [], "steps": i(20, 1, 10000), "denoise": f(1.0, 0.0, 1.0, 0.01)}, {}),
    "KarrasScheduler": ("sampling/schedulers", None, ["SIGMAS"], {
        "steps": i(20, 1, 10000), "sigma_max": SIGMA(14.614642, 5000.0), "sigma_min": SIGMA(0.0291675, 5000.0),
        "rho": SIGMA(7.0, 100.0)}, {}),
    "ExponentialScheduler": ("sampling/schedulers", None, ["SIGMAS"], {
        "steps": i(20, 1, 10000), "sigma_max": SIGMA(14.614642, 5000.0), "sigma_min": SIGMA(0.0291675, 5000.0)}, {}),
    "SDTurboScheduler": ("sampling/schedulers", None, ["SIGMAS"], {
        "model": "MODEL", "steps": i(1, 1, 10), "denoise": f(1.0, 0, 1.0, 0.01)}, {}),
    "SplitSigmas": ("sampling/sigmas", None, ["SIGMAS", "SIGMAS"], {"sigmas": "SIGMAS", "step": i(0, 0, 10000)}, {}),
    "SetFirstSigma": ("sampling/sigmas", None, ["SIGMAS"], {
        "sigmas": "SIGMAS", "sigma": ("FLOAT", {"default": 136.0, "min": 0.0, "max": 20000.0, "step": 0.001,
                                                "round": False})}, {}),
    "RandomNoise": ("sampling/noise", None, ["NOISE"], {"noise_seed": SEED}, {}),
    "DisableNoise": ("sampling/noise", None, ["NOISE"], {}, {}),
    "CFGGuider": ("sampling/guiders", "CFG Guider", ["GUIDER"], {
        "model": "MODEL", "positive": COND, "negative": COND, "cfg": CFG}, {}),
    "BasicGuider": ("sampling/guiders", "Basic Guider", ["GUIDER"], {"model": "MODEL", "conditioning": COND}, {}),
    # comfy_extras/nodes_mask.py, nodes_preview_any.py, nodes_number_convert.py; display names as the editor's
    # English node definitions (comfyui-frontend-package) give them
    "MaskPreview": ("mask", "Preview Mask", [], {"mask": MASK}, {}),
    "PreviewAny": ("utilities", "Preview as Text", ["STRING"], {"source": "*"}, {}),
    "ComfyNumberConvert": ("math", "Convert Number", ["FLOAT", "INT"], {"value": "INT,FLOAT,STRING,BOOLEAN"}, {}),
    # display names of nodes that existed before, from ComfyUI's NODE_DISPLAY_NAME_MAPPINGS
    "SaveImage": ("image", "Save Image", [], {"images": IMAGE, "filename_prefix": None}, {}),
    "PreviewImage": ("image", "Preview Image", [], {"images": IMAGE}, {}),
    # ComfyUI's custom_nodes/websocket_image_save.py
    "SaveImageWebsocket": ("api node/image", "Save Image (Websocket)", [], {"images": IMAGE}, {}),
    "LoadImage": ("image", "Load Image", [IMAGE, MASK], {"image": None}, {}),
    "LoadImageMask": ("mask", "Load Image (as Mask)", [MASK], {
        "image": None, "channel": ["alpha", "red", "green", "blue"]}, {}),
    "ImageScale": ("image/upscaling", "Upscale Image", [IMAGE], {
        "image": IMAGE, "upscale_method": UPSCALE, "width": i(512, 0, R, 1), "height": i(512, 0, R, 1),
        "crop": ["disabled", "center"]}, {}),
    "ImageInvert": ("image", "Invert Image Colors", [IMAGE], {"image": IMAGE}, {}),
    "ImageBatch": ("image", "Batch Images (DEPRECATED)", [IMAGE], {"image1": IMAGE, "image2": IMAGE}, {}),
}


@pytest.fixture(scope="module")
def object_info(tmp_path_factory) -> dict:
    return load_registry(plugins=False).object_info(make_environment(tmp_path_factory.mktemp("base")))


def check_input(node: str, name: str, ours: list, theirs) -> None:
    if theirs is None:  # a file list: only its presence is compared
        return
    kind, options = ours[0], ours[1]
    if isinstance(theirs, str):  # a socket
        assert kind == theirs, (node, name, kind)
    elif isinstance(theirs, list):  # a combo: ComfyUI's choices in ComfyUI's order (files: whatever is there)
        assert isinstance(kind, list) and (kind == theirs or not theirs), (node, name, kind)
    else:
        want_kind, want = theirs
        assert kind == want_kind, (node, name, kind)
        for key, value in want.items():
            assert options.get(key) == value, (node, name, key, options.get(key), value)
            assert type(options.get(key)) is type(value) or key == "default", (node, name, key)


@pytest.mark.parametrize("node", sorted(COMFYUI))
def test_object_info_matches_comfyui(object_info: dict, node: str) -> None:
    category, display, outputs, required, optional = COMFYUI[node]
    info = object_info[node]
    assert info["category"] == category
    assert info["display_name"] == (display or node)
    assert info["output"] == outputs
    assert list(info["input"]["required"]) == list(required)  # widget values are saved in this order
    assert list(info["input"].get("optional", {})) == list(optional)
    for section, expected in (("required", required), ("optional", optional)):
        for name, theirs in expected.items():
            check_input(node, name, info["input"][section][name], theirs)


def editor_display_names() -> dict[str, str]:
    """Node name -> display name from the editor package's English node definitions (a minified chunk: each
    definition is `v={display_name:`...`,...}`, and one object maps node names to those variables)."""
    package = pytest.importorskip("comfyui_frontend_package")
    assets = Path(package.__file__).parent / "static" / "assets"
    english = [text for chunk in sorted(assets.glob("nodeDefs-*.js"))
               if "display_name:`Load Checkpoint`" in (text := chunk.read_text(encoding="utf-8"))]
    assert len(english) == 1, "the editor package's English node definitions were not found"
    variables = dict(re.findall(r"([A-Za-z_$][\w$]*)=\{display_name:`([^`]*)`", english[0]))
    pairs = re.findall(r"[{,](\w+|\"[^\"]+\"):([A-Za-z_$][\w$]*)(?=[,}])", english[0])
    return {name.strip('"'): variables[var] for name, var in pairs if var in variables}


def test_display_names_are_the_editors(object_info: dict) -> None:
    names = editor_display_names()
    assert len(names) > 300 and names["CheckpointLoaderSimple"] == "Load Checkpoint"  # the reading works
    differ = {node: (info["display_name"], names[node]) for node, info in object_info.items()
              if node in names and info["display_name"] != names[node]}
    assert not differ, differ
    for node, (_, display, *_rest) in COMFYUI.items():
        if node in names:
            assert (display or node) == names[node], node
