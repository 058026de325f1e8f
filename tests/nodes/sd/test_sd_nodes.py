"""Behaviour of the SD nodes through the executor: seeds, batches, inpainting, LoRA, prompts, validation."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.families import family
from latentgraph.nodes.sd.latent_nodes import bislerp
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.prompt import encode_prompt, parse_weights
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.tiny import write_random_lora
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from latentgraph.nodes.sd.vae_nodes import encode
from PIL import Image
from safetensors.torch import save_file

from .conftest import TINY, with_checkpoint
from .sd_helpers import output_files, output_pixels, run_context, txt2img, with_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def handles(shared_executor):
    return CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))


def test_same_seed_gives_byte_identical_pngs(registry, tiny_file: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        executor = Executor(registry, make_environment(with_checkpoint(tmp_path / name, tiny_file)))
        result = executor.run(txt2img(TINY, seed=5))
        runs.append(output_files(executor.env, result))
    assert runs[0] == runs[1]


def test_batch_of_four_gives_four_distinct_images(shared_executor) -> None:
    result = shared_executor.run(txt2img(TINY, seed=9, batch=4, prefix="batch"))
    images = output_pixels(shared_executor.env, result)
    assert len(images) == 4
    assert len({img.tobytes() for img in images}) == 4


def test_seed_changes_the_image(shared_executor) -> None:
    a = output_pixels(shared_executor.env, shared_executor.run(txt2img(TINY, seed=1, prefix="s1")))[0]
    b = output_pixels(shared_executor.env, shared_executor.run(txt2img(TINY, seed=2, prefix="s2")))[0]
    assert not np.array_equal(a, b)


def test_inpainting_keeps_unmasked_latents(handles) -> None:
    model, clip, vae = handles
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = encode(vae, pixels)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :24] = 1.0
    with clip.use() as encoder:
        cond = [[encode_prompt("a boat", encoder, load_clip_tokenizer()), {}]]
    out = sample(model, seed=1, steps=4, cfg=5.0, sampler_name="euler_ancestral", scheduler_name="normal",
                 positive=cond, negative=cond, latent={"samples": latent, "noise_mask": mask[:, None]})["samples"]
    keep = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear")[0, 0] == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(out[..., keep], latent[..., keep])
    assert not torch.equal(out[..., ~keep], latent[..., ~keep])


@pytest.fixture(scope="module")
def local_vae_executor(registry, tiny_parts, tmp_path_factory: pytest.TempPathFactory) -> Executor:
    """The tiny UNet and text encoder with a near-local VAE: the block-average start of the demo VAE (8x8 block
    means, blurred upsampling). The tiny model's random VAE mixes every pixel with every other (32-group norms,
    mid-block attention: a pixel 50 px away from the mask moves by up to 134 levels), so it cannot show whether
    unmasked pixels are kept; this one reproduces an image within a few levels away from edges."""
    from diffusers import AutoencoderKL
    from latentgraph.nodes.sd.checkpoint_save import save_single_file
    from latentgraph.training.vae_init import init_vae

    vae = init_vae(AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * 4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=1, sample_size=64, scaling_factor=0.18215)).eval()
    base = tmp_path_factory.mktemp("local_vae")
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    save_single_file(tiny_parts.unet, vae, tiny_parts.text_encoder, checkpoints / "local.safetensors")
    return Executor(registry, make_environment(base))


def test_inpaint_workflow_keeps_unmasked_pixels_and_repaints_masked_ones(local_vae_executor) -> None:
    """The inpaint workflow's decoded output against the same VAE's round trip of the encoded input.

    Unmasked pixels more than 12 px (1.5 latent cells) from the mask must equal the round trip within 40 levels:
    measured 29 at most (mean 18), which is the VAE's own reach, not sampling: its decoder normalises over the whole
    image, so new content in the hole shifts every pixel a little. Every masked pixel must differ from the round
    trip by more than that (measured at least 107). The round trip itself stays near the original image there
    (mean error measured 13.6 levels), so "kept" means kept from the input file. A sampler that ignored the noise
    mask, an inverted mask or a mask lost on the way would fail."""
    executor = local_vae_executor
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "local.safetensors"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example_inpaint.png"}},
        "12": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["10", 0], "vae": ["4", 2],
                                                               "mask": ["10", 1], "grow_mask_by": 6}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["6", 0],
                                                   "latent_image": ["12", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "inpainted"}},
        "21": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
        "22": {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "round_trip"}},
    }
    result = executor.run(workflow)
    assert result.status == "success", result.error
    out = output_pixels(executor.env, result, "9")[0].astype(int)
    round_trip = output_pixels(executor.env, result, "22")[0].astype(int)
    rgba = np.asarray(Image.open(executor.env.folders.input_dir / "example_inpaint.png"))
    original = rgba[..., :3].astype(int)
    masked = torch.from_numpy(rgba[..., 3] == 0)
    near = torch.nn.functional.max_pool2d(masked[None, None].float(), 25, stride=1, padding=12)[0, 0] > 0
    far = (~near).numpy()
    masked = masked.numpy()
    assert masked.sum() == 32 * 48 and far.sum() > 10_000
    assert np.abs(round_trip - original).max(-1)[far].mean() < 20
    assert np.abs(out - round_trip).max(-1)[far].max() <= 40
    assert np.abs(out - round_trip).max(-1)[masked].min() > 40


def test_lora_strength_zero_equals_none_and_one_differs(registry, tiny_file: Path, tiny_parts, tmp_path: Path) -> None:
    base = with_checkpoint(tmp_path, tiny_file)
    write_random_lora(base / "models" / "loras" / "style.safetensors", tiny_parts.unet, tiny_parts.text_encoder)
    executor = Executor(registry, make_environment(base))

    def pixels(workflow: dict) -> np.ndarray:
        result = executor.run(workflow)
        assert result.status == "success", result.error
        return output_pixels(executor.env, result)[0]

    plain = txt2img(TINY, seed=4)
    before = pixels(plain)
    with_one = pixels(with_lora(plain, "style.safetensors", 1.0))
    with_zero = pixels(with_lora(plain, "style.safetensors", 0.0))
    executor.free(models=False)
    after = pixels(plain)
    assert np.array_equal(before, with_zero)
    assert not np.array_equal(before, with_one)
    assert np.array_equal(before, after), "the LoRA run changed the shared base weights"


def test_lora_for_another_architecture_is_an_error(registry, tiny_file: Path, tmp_path: Path) -> None:
    base = with_checkpoint(tmp_path, tiny_file)
    (base / "models" / "loras").mkdir(parents=True)
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 3),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(3, 2)},
              str(base / "models" / "loras" / "alien.safetensors"))
    result = Executor(registry, make_environment(base)).run(with_lora(txt2img(TINY), "alien.safetensors", 1.0))
    assert result.status == "error"
    assert "another architecture" in result.error["exception_message"]


def test_unsupported_sampler_scheduler_pair_is_a_validation_error(shared_executor) -> None:
    with pytest.raises(InvalidPrompt) as raised:
        shared_executor.run(txt2img(TINY, sampler="ddim", scheduler="karras"))
    errors = raised.value.validation.node_errors["3"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "supported schedulers for ddim: normal, sgm_uniform, simple, ddim_uniform" in str(errors)


def test_progress_preview_and_interrupt_every_step(shared_executor) -> None:
    events: list[tuple[str, dict]] = []
    result = shared_executor.run(txt2img(TINY, seed=77, steps=3), sink=lambda e, d: events.append((e, d)))
    assert result.status == "success"
    progress = [d["value"] for e, d in events if e == "progress" and d["node"] == "3"]
    assert progress == [1, 2, 3]
    previews = [d["image"] for e, d in events if e == "preview" and d["node"] == "3"]
    assert 2 <= len(previews) <= 3 and previews[-1].size == (8, 8)

    token = InterruptToken()

    def stop_after_first_step(event: str, data: dict) -> None:
        if event == "progress" and data["value"] == 1:
            token.set()

    result = shared_executor.run(txt2img(TINY, seed=78, steps=5), sink=stop_after_first_step, interrupt=token)
    assert result.status == "interrupted"


def test_two_stage_advanced_sampling_equals_one_pass(handles) -> None:
    """Steps 0-3 with leftover noise, then 3-6 without adding noise, equals the 6 steps in one go."""
    model, clip, _ = handles
    with clip.use() as encoder:
        cond = [[encode_prompt("a tree", encoder, load_clip_tokenizer()), {}]]
    for sampler in ("euler", "ddim"):
        common = dict(seed=11, steps=6, cfg=4.0, sampler_name=sampler, scheduler_name="normal", positive=cond,
                      negative=cond)
        empty = {"samples": torch.zeros(1, 4, 8, 8)}
        whole = sample(model, latent=empty, **common)["samples"]
        first = sample(model, latent=empty, end_step=3, force_full_denoise=False, **common)
        second = sample(model, latent=first, add_noise=False, start_step=3, **common)["samples"]
        assert torch.allclose(whole, second, atol=1e-4), sampler
        early = sample(model, latent=empty, end_step=3, force_full_denoise=True, **common)["samples"]
        assert not torch.allclose(early, first["samples"])


def test_prompt_weight_syntax() -> None:
    assert parse_weights("a (red:1.5) house") == [("a ", 1.0), ("red", 1.5), (" house", 1.0)]
    assert parse_weights("(big) [small]") == [("big", pytest.approx(1.1)), (" ", 1.0),
                                              ("small", pytest.approx(1 / 1.1))]
    assert parse_weights("((x))") == [("x", pytest.approx(1.21))]
    assert parse_weights(r"\(literal\)") == [("(literal)", 1.0)]
    assert parse_weights("") == [("", 1.0)]


def test_prompt_encoding_weights_chunks_layers_and_embeddings(handles, tmp_path: Path) -> None:
    _, clip, _ = handles
    tokenizer = load_clip_tokenizer()
    env = make_environment(tmp_path)
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "models" / "embeddings" / "mystyle.safetensors"))
    with clip.use() as encoder:
        def enc(text: str, layer: int = -1) -> torch.Tensor:
            return encode_prompt(text, encoder, tokenizer, layer, env.folders)

        plain = enc("a red house")
        assert plain.shape == (1, 77, 32)
        assert torch.equal(plain, enc("a (red house:1.0)"))
        assert not torch.equal(plain, enc("a (red:1.4) house"))
        assert enc(" ".join(["house"] * 100)).shape == (1, 154, 32)
        assert not torch.equal(plain, enc("a red house", layer=-2))
        styled = enc("a embedding:mystyle house")
        assert styled.shape == (1, 77, 32) and not torch.equal(styled, enc("a house"))
        with pytest.raises(FileNotFoundError):
            enc("embedding:missing")


def test_latent_resizing() -> None:
    latent = torch.randn(2, 4, 8, 8)
    assert bislerp(latent, 12, 10).shape == (2, 4, 10, 12)
    assert torch.allclose(bislerp(latent, 8, 8), latent, atol=1e-5)


def test_workflow_examples_are_copied_to_a_fresh_input_folder(tmp_path: Path) -> None:
    env = make_environment(tmp_path)
    assert (env.folders.input_dir / "example.png").is_file()
    shutil.rmtree(env.folders.input_dir)
    make_environment(tmp_path)
    assert (tmp_path / "input" / "example_inpaint.png").is_file()


def test_sd2_layer_numbering_follows_comfyui(handles) -> None:
    _, clip, _ = handles
    sd2 = replace(clip, family=family("sd2"))
    assert [sd2.with_layer(n).encoder_layer for n in (-1, -2, -3)] == [-1, -1, -2]
    assert [clip.with_layer(n).encoder_layer for n in (-1, -2)] == [-1, -2]


def test_latent_upscale_keeps_aspect_for_a_zero_side_and_the_noise_mask(shared_executor) -> None:
    from latentgraph.nodes.sd.latent_nodes import LatentUpscale, LatentUpscaleBy

    latent = {"samples": torch.randn(1, 4, 8, 16), "noise_mask": torch.ones(1, 1, 64, 128)}
    ctx = run_context(shared_executor.env)
    (out,) = LatentUpscale(samples=latent, upscale_method="bilinear", width=0, height=128, crop="disabled").execute(ctx)
    assert out["samples"].shape == (1, 4, 16, 32) and out["noise_mask"] is latent["noise_mask"]
    (by,) = LatentUpscaleBy(samples=latent, upscale_method="bislerp", scale_by=1.5).execute(ctx)
    assert by["samples"].shape == (1, 4, 12, 24)
