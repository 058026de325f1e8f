"""Train == infer for LoRA: the output of a model with LoRA layers attached as training attaches them equals the
output after LoraLoader's patch of the saved file, for every kind of module training targets (Linear, 1x1 conv,
3x3 conv, strided 3x3 conv, text-encoder Linear); the training conditioning equals CLIPTextEncode's; and our
patch of a kohya file equals diffusers' own `load_lora_weights` + `fuse_lora`, for a file training writes and for
one built independently here.

All on the tiny SD1 model of nodes/sd/tiny.py (fixed seed), whose UNet has every one of those module kinds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from latentgraph.nodes.sd.lora import LoraPatch, lora_deltas, patched
from latentgraph.nodes.sd.prompt import encode_prompt
from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components
from latentgraph.training.lora import TEXT_TARGETS, UNET_TARGETS, LoraLayer, attached, kohya_state, make_lora
from safetensors.torch import save_file

TOLERANCE = 1e-5
CAPTION = "a checkered square, on a purple background"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts():
    return build_tiny_pipeline_components(seed=0)


def _kind(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if module.kernel_size == (1, 1):
        return "conv1x1"
    return "conv3x3_strided" if module.stride != (1, 1) else "conv3x3"


def _trained_layers(model: torch.nn.Module, suffixes: tuple[str, ...], conv: bool, seed: int,
                    rank: int = 4, alpha: float = 2.0) -> dict[str, LoraLayer]:
    """LoRA layers as training makes them, with `up` set to random values as if trained (fresh ones are zero)."""
    generator = torch.Generator().manual_seed(seed)
    layers = make_lora(model, suffixes, rank, alpha, generator, conv=conv)
    with torch.no_grad():
        for layer in layers.values():
            layer.up.normal_(0.0, 0.2, generator=generator)
    return layers


def _inputs(parts, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = parts.tokenizer([CAPTION, "a red circle"], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
    return torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([50, 700]), ids


def _patched_outputs(parts, path: Path, strength: float, x, t, ids) -> tuple[torch.Tensor, torch.Tensor]:
    unet_patch = LoraPatch(path, f"{path}:{path.stat().st_mtime_ns}", "unet", strength)
    text_patch = LoraPatch(path, f"{path}:{path.stat().st_mtime_ns}", "text_encoder", strength)
    with torch.no_grad(), patched(parts.unet, (unet_patch,)), patched(parts.text_encoder, (text_patch,)):
        hidden = parts.text_encoder(ids).last_hidden_state
        return hidden, parts.unet(x, t, hidden).sample


def test_every_module_kind_is_targeted(parts) -> None:
    layers = make_lora(parts.unet, UNET_TARGETS, 4, 4.0, torch.Generator().manual_seed(0), conv=True)
    kinds = {_kind(parts.unet.get_submodule(name)) for name in layers}
    assert kinds == {"linear", "conv1x1", "conv3x3", "conv3x3_strided"}
    assert any(".resnets." in n and n.endswith("conv1") for n in layers)
    assert any("upsamplers" in n for n in layers) and any("downsamplers" in n for n in layers)
    assert not any("resnets" in n for n in make_lora(parts.unet, UNET_TARGETS, 4, 4.0, torch.Generator(), conv=False))


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3", "conv3x3_strided", "all"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_training_output_equals_loraloader_output(parts, tmp_path: Path, kind: str, strength: float) -> None:
    unet_layers = _trained_layers(parts.unet, UNET_TARGETS, conv=True, seed=2)
    if kind != "all":
        unet_layers = {n: layer for n, layer in unet_layers.items() if _kind(parts.unet.get_submodule(n)) == kind}
    text_layers = _trained_layers(parts.text_encoder, TEXT_TARGETS, conv=False, seed=3) if kind == "all" else {}
    assert unet_layers
    path = tmp_path / "trained.safetensors"
    save_file(kohya_state(unet_layers, text_layers), str(path))
    x, t, ids = _inputs(parts)
    with torch.no_grad():
        base_hidden = parts.text_encoder(ids).last_hidden_state
        base_out = parts.unet(x, t, base_hidden).sample
        for layer in (*unet_layers.values(), *text_layers.values()):
            layer.up.mul_(strength)  # what LoraLoader's strength does to the delta
        with attached(parts.unet, unet_layers), attached(parts.text_encoder, text_layers):
            train_hidden = parts.text_encoder(ids).last_hidden_state
            train_out = parts.unet(x, t, train_hidden).sample
    infer_hidden, infer_out = _patched_outputs(parts, path, strength, x, t, ids)

    assert (train_out - base_out).abs().max() > 1e-2  # the LoRA changes the output, so equality means something
    assert (infer_out - train_out).abs().max() < TOLERANCE
    assert (infer_hidden - train_hidden).abs().max() < TOLERANCE
    if text_layers:
        assert (train_hidden - base_hidden).abs().max() > 1e-2
    with torch.no_grad():  # the patch was taken off exactly
        assert torch.equal(parts.unet(x, t, base_hidden).sample, base_out)


def test_every_saved_pair_addresses_the_module_it_was_trained_on(parts) -> None:
    unet_layers = _trained_layers(parts.unet, UNET_TARGETS, conv=True, seed=4)
    text_layers = _trained_layers(parts.text_encoder, TEXT_TARGETS, conv=False, seed=5)
    state = kohya_state(unet_layers, text_layers)
    for model, layers, target in ((parts.unet, unet_layers, "unet"), (parts.text_encoder, text_layers, "text_encoder")):
        deltas = lora_deltas(state, model, target)
        assert set(deltas) == {name + ".weight" for name in layers}
        for name, layer in layers.items():
            expected = layer.scale * torch.einsum("or,ri...->oi...", layer.up.detach().flatten(1),
                                                  layer.down.detach())
            assert torch.allclose(deltas[name + ".weight"], expected.reshape(deltas[name + ".weight"].shape),
                                  atol=1e-6)


def test_training_conditioning_equals_clip_text_encode(parts) -> None:
    ids = parts.tokenizer([CAPTION], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        training = parts.text_encoder(ids).last_hidden_state
    workflow = encode_prompt(CAPTION, parts.text_encoder, parts.tokenizer)
    assert workflow.shape == training.shape
    assert torch.equal(workflow, training)


# ---- against diffusers' own loader ---------------------------------------------------------------------------


def _independent_kohya_file(parts, path: Path, rank: int = 3, alpha: float = 1.5) -> Path:
    """A kohya-layout LoRA built without our code: every attention Linear, every proj_in/out 1x1 conv, resnet
    3x3 convs as LoCon (down [r, in, 3, 3], up [out, r, 1, 1]), and the text encoder's attention and MLP."""
    generator = torch.Generator().manual_seed(11)
    tensors: dict[str, torch.Tensor] = {}

    def add(key: str, module: torch.nn.Module) -> None:
        out_ch, in_ch = module.weight.shape[:2]
        kernel = tuple(module.weight.shape[2:])
        tensors[key + ".lora_down.weight"] = torch.randn(rank, in_ch, *kernel, generator=generator) * 0.3
        tensors[key + ".lora_up.weight"] = torch.randn(out_ch, rank, *((1, 1) if kernel else ()),
                                                       generator=generator) * 0.3
        tensors[key + ".alpha"] = torch.tensor(alpha)

    for name, module in parts.unet.named_modules():
        attention = name.endswith(("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"))
        resnet_conv = ".resnets." in name and name.endswith(("conv1", "conv2"))
        if attention or resnet_conv:
            add("lora_unet_" + "_".join(name.split(".")), module)
    # kohya's text-encoder names are those of transformers 4 (`text_model.encoder...`), written out here by hand:
    # transformers 5 names the same modules without `text_model.`
    inner = getattr(parts.text_encoder, "text_model", parts.text_encoder)
    for layer in range(parts.text_encoder.config.num_hidden_layers):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                     "mlp.fc2"):
            module = inner.get_submodule(f"encoder.layers.{layer}.{part}")
            add(f"lora_te_text_model_encoder_layers_{layer}_{part.replace('.', '_')}", module)
    save_file(tensors, str(path))
    return path


def _written_by_training(parts, path: Path) -> Path:
    unet_layers = _trained_layers(parts.unet, UNET_TARGETS, conv=True, seed=6)
    text_layers = _trained_layers(parts.text_encoder, TEXT_TARGETS, conv=False, seed=7)
    save_file(kohya_state(unet_layers, text_layers), str(path))
    return path


@pytest.mark.parametrize("source", ["training", "independent"])
def test_loraloader_equals_diffusers_load_lora_weights(parts, tmp_path: Path, source: str) -> None:
    make = _written_by_training if source == "training" else _independent_kohya_file
    path = make(parts, tmp_path / f"{source}.safetensors")
    strength = 0.7
    x, t, ids = _inputs(parts)
    ours_hidden, ours_out = _patched_outputs(parts, path, strength, x, t, ids)
    with torch.no_grad():
        ours_weights = {}
        unet_patch = LoraPatch(path, str(path), "unet", strength)
        text_patch = LoraPatch(path, str(path), "text_encoder", strength)
        with patched(parts.unet, (unet_patch,)), patched(parts.text_encoder, (text_patch,)):
            ours_weights["unet"] = {k: v.clone() for k, v in parts.unet.state_dict().items()}
            ours_weights["text_encoder"] = {k: v.clone() for k, v in parts.text_encoder.state_dict().items()}

    unet, text_encoder = copy.deepcopy(parts.unet), copy.deepcopy(parts.text_encoder)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                   scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=strength)
    pipe.unload_lora_weights()  # keeps the fused weights, removes the adapter layers
    with torch.no_grad():
        theirs_hidden = text_encoder(ids).last_hidden_state
        theirs_out = unet(x, t, theirs_hidden).sample
    base = {"unet": parts.unet.state_dict(), "text_encoder": parts.text_encoder.state_dict()}
    changed = 0
    for model, theirs in (("unet", unet), ("text_encoder", text_encoder)):
        for key, value in theirs.state_dict().items():
            assert torch.allclose(ours_weights[model][key], value, atol=1e-6), f"{model} {key}"
            changed += not torch.equal(value, base[model][key])
    assert changed == sum(1 for key in _keys(path) if key.endswith(".lora_down.weight"))
    assert (theirs_hidden - ours_hidden).abs().max() < TOLERANCE
    assert (theirs_out - ours_out).abs().max() < TOLERANCE


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())
