"""ControlNet on the tiny SD1 model: our nodes and sampler against diffusers' StableDiffusionControlNetPipeline with
the same tiny parts, seed and scheduler; the three file layouts; strength, window, chains; refusals at validation.

The tiny ControlNet is diffusers' ControlNetModel.from_unet of the tiny UNet with its zero-initialised layers (the
"zero convolutions" and the hint encoder's last convolution) filled with seeded random values, so that it changes
the result."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from latentgraph.engine.validate import validate
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.sd.controlnet import load_controlnet, prepare_hint
from latentgraph.nodes.sd.controlnet_nodes import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    ControlNetLoader,
    DiffControlNetLoader,
)
from latentgraph.nodes.sd.ldm_keys import unet_key_to_ldm
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.prompt import encode_prompt
from latentgraph.nodes.sd.samplers import make_scheduler
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from safetensors.torch import save_file

from .conftest import TINY, with_checkpoint
from .sd_helpers import output_pixels, run_context, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, NEGATIVE = "a lighthouse on a cliff", "blurry"
STEPS, CFG, SEED = 4, 6.0, 11
ZERO_INITIALISED = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def tiny_controlnet(unet: torch.nn.Module, seed: int) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(ZERO_INITIALISED):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return controlnet.eval().requires_grad_(False)


def ldm_state(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    return ldm_state_of(controlnet.state_dict(), controlnet)


def ldm_state_of(state: dict[str, torch.Tensor], controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """Weights of `controlnet`'s architecture under the original (lllyasviel) names, written here from the LDM UNet
    naming and the cldm module layout (hint convolutions at 0, 2, 4, ..., zero convolutions, middle_block_out)."""
    layers = controlnet.config.layers_per_block
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            name = f"zero_convs.{m[1]}.0.{m[2]}"
        elif key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.removeprefix("controlnet_mid_block.")
        elif key.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + key.removeprefix("controlnet_cond_embedding.conv_in.")
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            name = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            rest = key.removeprefix("controlnet_cond_embedding.conv_out.")
            name = f"input_hint_block.{2 * (hint_blocks + 1)}.{rest}"
        else:
            name = unet_key_to_ldm(key, layers, set())
        out["control_model." + name] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def controlnets(tiny_parts) -> tuple[ControlNetModel, ControlNetModel]:
    return tiny_controlnet(tiny_parts.unet, 1), tiny_controlnet(tiny_parts.unet, 2)


@pytest.fixture(scope="module")
def env(registry, tiny_file: Path, controlnets, tmp_path_factory: pytest.TempPathFactory):
    base = with_checkpoint(tmp_path_factory.mktemp("cn"), tiny_file)
    folder = base / "models" / "controlnet"
    first, second = controlnets
    first.save_pretrained(folder / "tiny_cn_folder", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(folder / "tiny_cn_diffusers.safetensors"))
    save_file(ldm_state(first), str(folder / "control_tiny_ldm.safetensors"))
    save_file({k: v.contiguous() for k, v in second.state_dict().items()}, str(folder / "second.safetensors"))
    return make_environment(base)


@pytest.fixture(scope="module")
def handles(env):
    return CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(env))


def conditioning(clip, text: str) -> list:
    with clip.use() as encoder:
        return [[encode_prompt(text, encoder, load_clip_tokenizer()), {}]]


def hint(seed: int, size: int = 64) -> torch.Tensor:
    """An IMAGE [1, H, W, 3] in 0..1."""
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def load(env, name: str):
    return ControlNetLoader(control_net_name=name).execute(run_context(env))[0]


def ours(env, handles, apply=None, sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    model, clip, _ = handles
    positive, negative = conditioning(clip, PROMPT), conditioning(clip, NEGATIVE)
    if apply is not None:
        positive, negative = apply(positive, negative)
    return sample(model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler, scheduler_name=scheduler,
                  positive=positive, negative=negative, latent={"samples": torch.zeros(1, 4, 8, 8)})["samples"]


def advanced(env, net, image, strength=1.0, start=0.0, end=1.0):
    def apply(positive, negative):
        return ControlNetApplyAdvanced(positive=positive, negative=negative, control_net=net, image=image,
                                       strength=strength, start_percent=start, end_percent=end,
                                       ).execute(run_context(env))
    return apply


def theirs(tiny_parts, model, controlnet, image, sampler: str = "euler", scheduler: str = "normal",
           **options) -> torch.Tensor:
    pipe = StableDiffusionControlNetPipeline(
        vae=tiny_parts.vae, text_encoder=tiny_parts.text_encoder, tokenizer=tiny_parts.tokenizer,
        unet=tiny_parts.unet, controlnet=controlnet, scheduler=make_scheduler(sampler, scheduler,
                                                                              model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, height=64, width=64, num_inference_steps=STEPS,
                guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED), output_type="latent",
                **options).images


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler", "normal"), ("dpmpp_2m", "karras")])
def test_apply_advanced_equals_controlnet_pipeline(env, handles, tiny_parts, controlnets, sampler, scheduler):
    model = handles[0]
    image = hint(5)
    result = ours(env, handles, advanced(env, load(env, "tiny_cn_folder"), image, strength=0.7), sampler, scheduler)
    reference = theirs(tiny_parts, model, controlnets[0], image.movedim(-1, 1), sampler, scheduler,
                       controlnet_conditioning_scale=0.7)
    plain = ours(env, handles, sampler=sampler, scheduler=scheduler)
    assert (result - plain).abs().max() > 0.05  # the ControlNet changes the result
    assert torch.allclose(result * model.latent_scale, reference, atol=1e-4, rtol=1e-4), \
        float((result * model.latent_scale - reference).abs().max())


@pytest.mark.parametrize("name", ["tiny_cn_diffusers.safetensors", "control_tiny_ldm.safetensors"])
def test_single_files_load_the_same_controlnet(env, controlnets, name):
    """A diffusers-layout single file and an original-layout (control_model.*) file give the saved weights and
    config, recognised offline from their tensors."""
    loaded = load_controlnet(env.folders.find("controlnet", name), torch.float32)
    reference = controlnets[0]
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                "conditioning_embedding_out_channels", "attention_head_dim", "transformer_layers_per_block"):
        want, got = reference.config[key], loaded.config[key]
        assert (list(got) == list(want)) if isinstance(want, list | tuple) else got == want, key
    theirs_state = reference.state_dict()
    assert loaded.state_dict().keys() == theirs_state.keys()
    assert all(torch.equal(v, theirs_state[k]) for k, v in loaded.state_dict().items())


def test_strength_zero_equals_no_controlnet(env, handles):
    net = load(env, "control_tiny_ldm.safetensors")
    assert torch.equal(ours(env, handles, advanced(env, net, hint(5), strength=0.0)), ours(env, handles))


@pytest.mark.parametrize(("start", "end"), [(0.5, 1.0), (0.0, 0.5)])
def test_window_equals_pipeline_guidance_window(env, handles, tiny_parts, controlnets, start, end):
    """Euler over 4 steps calls the model at timesteps 999, 666, 333, 0: ComfyUI's window 0.5..1 (sigma at or
    below that of t = 499.5) runs the ControlNet on the last two calls, as the pipeline's control_guidance_start
    0.5 does (and 0..0.5 on the first two, as control_guidance_end 0.5)."""
    model = handles[0]
    image = hint(6)
    result = ours(env, handles, advanced(env, load(env, "tiny_cn_diffusers.safetensors"), image, 0.8, start, end))
    reference = theirs(tiny_parts, model, controlnets[0], image.movedim(-1, 1), controlnet_conditioning_scale=0.8,
                       control_guidance_start=start, control_guidance_end=end)
    full = ours(env, handles, advanced(env, load(env, "tiny_cn_diffusers.safetensors"), image, 0.8))
    assert (result - full).abs().max() > 1e-3
    assert torch.allclose(result * model.latent_scale, reference, atol=1e-4, rtol=1e-4)


def test_two_chained_controlnets_equal_multi_controlnet_pipeline(env, handles, tiny_parts, controlnets):
    model = handles[0]
    first, second = hint(7), hint(8)
    apply_first = advanced(env, load(env, "tiny_cn_folder"), first, strength=0.6)
    apply_second = advanced(env, load(env, "second.safetensors"), second, strength=0.9)
    result = ours(env, handles, lambda p, n: apply_second(*apply_first(p, n)))
    reference = theirs(tiny_parts, model, list(controlnets), [first.movedim(-1, 1), second.movedim(-1, 1)],
                       controlnet_conditioning_scale=[0.6, 0.9])
    assert torch.allclose(result * model.latent_scale, reference, atol=1e-4, rtol=1e-4)


def test_old_apply_also_controls_the_negative(env, handles):
    """ControlNetApply marks its ControlNet for the unconditional pass too, so it equals the advanced node applied
    to both sides."""
    net, image = load(env, "tiny_cn_folder"), hint(9)

    def old(positive, negative):
        return ControlNetApply(conditioning=positive, control_net=net, image=image, strength=0.5,
                               ).execute(run_context(env))[0], negative

    assert torch.allclose(ours(env, handles, old), ours(env, handles, advanced(env, net, image, 0.5)), atol=1e-6)


def test_diff_loader_loads_an_ordinary_controlnet_as_is(env, handles):
    net = DiffControlNetLoader(model=handles[0], control_net_name="tiny_cn_diffusers.safetensors",
                               ).execute(run_context(env))[0]
    assert net.base is None and net == load(env, "tiny_cn_diffusers.safetensors")


def test_difference_controlnet_gets_the_model_weights_added(env, handles, tiny_parts, controlnets):
    """A "diff" ControlNet stores its weights minus the UNet's where both have them (ComfyUI's `difference` key):
    DiffControlNetLoader adds the model's weights back; ControlNetLoader refuses it at validation."""
    unet = tiny_parts.unet.state_dict()
    original = controlnets[0].state_dict()
    names = ldm_state(controlnets[0])
    plain = {k: original[k] - unet[k] if k in unet else original[k] for k in original}
    diff = ldm_state_of(plain, controlnets[0])
    diff["difference"] = torch.zeros(1)
    assert diff.keys() - {"difference"} == names.keys()
    save_file(diff, str(env.folders.folders("controlnet")[0] / "diff.safetensors"))
    net = DiffControlNetLoader(model=handles[0], control_net_name="diff.safetensors").execute(run_context(env))[0]
    with net.use() as loaded:
        assert all(torch.allclose(v, original[k], atol=1e-6) for k, v in loaded.state_dict().items())
    validation = validate({"1": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "diff.safetensors"}}},
                          load_registry(plugins=False), env, outputs=["1"])
    assert not validation.ok and "DiffControlNetLoader" in validation.summary()


def test_hint_is_centre_cropped_and_resized_nearest_exact():
    image = torch.arange(2 * 3 * 40 * 80, dtype=torch.float32).reshape(2, 3, 40, 80)
    out = prepare_hint(image, 16, 16, 4)
    crop = image[:, :, :, 20:60]  # the centred 40x40 square
    expected = torch.nn.functional.interpolate(crop, size=(16, 16), mode="nearest-exact")
    assert torch.equal(out[:2], expected) and torch.equal(out[2:], expected)


def test_wrong_files_are_refused_at_validation(registry, tiny_file: Path, tmp_path: Path):
    base = with_checkpoint(tmp_path, tiny_file)
    folder = base / "models" / "controlnet"
    folder.mkdir(parents=True)
    (folder / "checkpoint.safetensors").write_bytes(tiny_file.read_bytes())
    save_file({"weight": torch.zeros(2)}, str(folder / "random.safetensors"))
    torch.save({"a": torch.zeros(1)}, folder / "pickled.pth")
    # the two tensors by which ComfyUI tells an MMDiT (SD3/SD3.5) ControlNet, as in SD3ControlNetModel's state dict
    mmdit = {"controlnet_blocks.0.weight": torch.zeros(8, 8), "pos_embed_input.proj.weight": torch.zeros(8, 16, 2, 2)}
    save_file(mmdit, str(folder / "sd3.5_large_controlnet_canny.safetensors"))
    env = make_environment(base)
    for name, message in (("checkpoint.safetensors", "model checkpoint"), ("random.safetensors", "no ControlNet"),
                          ("pickled.pth", "pickled"),
                          ("sd3.5_large_controlnet_canny.safetensors", "an SD3 (MMDiT) ControlNet, which is not")):
        prompt = {"1": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}}
        validation = validate(prompt, registry, env, outputs=["1"])
        text = validation.summary()
        assert not validation.ok and "input 'control_net_name'" in text and message in text, text


@pytest.mark.slow  # about 10 s: the SDXL pipeline and ours, with two text encoders
def test_sdxl_controlnet_equals_sdxl_controlnet_pipeline(registry, tmp_path: Path):
    """An SDXL ControlNet (text-time embedding, two text encoders) on the tiny SDXL model, against
    StableDiffusionXLControlNetPipeline; its diffusers-layout single file reads back the same weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline
    from latentgraph.nodes.sd.detect import family_config
    from latentgraph.nodes.sd.families import checkpoint_handles, inspect_checkpoint
    from latentgraph.nodes.sd.sdxl import save_sdxl_single_file
    from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

    from .families_tiny import tiny_sdxl

    parts = tiny_sdxl()
    path = save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                                 tmp_path / "models" / "checkpoints" / "tiny_sdxl.safetensors")
    controlnet = tiny_controlnet(parts["unet"], 3)
    folder = tmp_path / "models" / "controlnet"
    controlnet.save_pretrained(folder / "xl_folder", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(folder / "xl.safetensors"))
    env = make_environment(tmp_path)
    ctx = run_context(env)
    model, clip, _ = checkpoint_handles(inspect_checkpoint(path), env)
    loaded = load_controlnet(folder / "xl.safetensors", torch.float32)
    assert loaded.config.addition_embed_type == "text_time"
    assert all(torch.equal(v, controlnet.state_dict()[k]) for k, v in loaded.state_dict().items())
    image = hint(12)
    positive, negative = ControlNetApplyAdvanced(
        positive=CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0],
        negative=CLIPTextEncode(text=NEGATIVE, clip=clip).execute(ctx)[0],
        control_net=load(env, "xl_folder"), image=image, strength=0.8, start_percent=0.0, end_percent=1.0,
    ).execute(ctx)
    result = sample(model, seed=SEED, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler_name="normal",
                    positive=positive, negative=negative, latent={"samples": torch.zeros(1, 4, 8, 8)})["samples"]
    scheduler = EulerDiscreteScheduler.from_config(dict(family_config("sdxl_base", "scheduler"),
                                                        timestep_spacing="linspace"))
    pipe = StableDiffusionXLControlNetPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=load_clip_tokenizer(), tokenizer_2=load_clip_tokenizer("!"), unet=parts["unet"],
        controlnet=controlnet, scheduler=scheduler)
    reference = pipe(PROMPT, negative_prompt=NEGATIVE, image=image.movedim(-1, 1), num_inference_steps=STEPS,
                     guidance_scale=5.0, height=64, width=64, controlnet_conditioning_scale=0.8,
                     generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    torch.testing.assert_close(result * model.latent_scale, reference, atol=1e-4, rtol=1e-4)


def test_a_controlnet_on_an_sd3_model_is_refused_clearly(env, handles):
    """SD3's MMDiT takes no UNet residuals: sampling it with a UNet ControlNet fails with a message, not a
    TypeError from deep inside the call."""
    from latentgraph.nodes.sd.controlnet import ControlledNet

    from .families_tiny import tiny_sd3

    net = tiny_sd3()["transformer"]
    positive, _ = advanced(env, load(env, "tiny_cn_folder"), hint(1))(conditioning(handles[1], PROMPT), [])
    controlled_net = ControlledNet(net, None, [positive[0][1]["control"]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SD3 ControlNets are not supported"):
        controlled_net(hidden_states=torch.zeros(1, 16, 8, 8), timestep=torch.ones(1),
                       encoder_hidden_states=torch.zeros(1, 4, 32), pooled_projections=torch.zeros(1, 64))


def test_shared_workflow_runs_through_the_executor(registry, env):
    """A ControlNet workflow as people share it: LoadImage -> Canny -> ControlNetApplyAdvanced (with a
    ControlNetLoader) between the prompts and KSampler. It runs, the ControlNet changes the image, strength 0 gives
    the image without it, and changing only the strength reruns only the apply node and what follows."""
    from latentgraph.engine.executor import Executor

    executor = Executor(registry, env)
    plain = txt2img(TINY, steps=3, prefix="plain")
    workflow = txt2img(TINY, steps=3, prefix="controlled")
    workflow.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "21": {"class_type": "Canny", "inputs": {"image": ["20", 0], "low_threshold": 0.2, "high_threshold": 0.5}},
        "22": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_tiny_ldm.safetensors"}},
        "23": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["22", 0], "image": ["21", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
    })
    workflow["3"]["inputs"].update(positive=["23", 0], negative=["23", 1])
    without = executor.run(plain)
    first = executor.run(workflow)
    assert first.status == "success", first.error
    assert (output_pixels(env, first)[0].astype(int) - output_pixels(env, without)[0]).any()
    workflow["23"]["inputs"]["strength"] = 0.0
    second = executor.run(workflow)
    assert sorted(second.executed) == ["23", "3", "8", "9"]
    assert (output_pixels(env, second)[0] == output_pixels(env, without)[0]).all()
