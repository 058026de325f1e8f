"""What ConditioningCombine, the strength-weighted average, SetLatentNoiseMask and CLIPSetLastLayer do to the
numbers, each against a reference computed here from the tiny model's own diffusers/transformers parts (built
independently from the same seed), so that a node turned into a no-op or given the wrong maths fails."""

from __future__ import annotations

import pytest
import torch
from latentgraph.nodes.sd.conditioning_nodes import ConditioningSetAreaStrength
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sampling import guided
from latentgraph.nodes.sd.text_nodes import CLIPSetLastLayer, CLIPTextEncode, ConditioningCombine
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from safetensors.torch import load_file

from .conftest import TINY
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def handles(shared_executor):
    return CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))


def _encode(clip, text: str, ctx) -> list:
    return CLIPTextEncode(text=text, clip=clip).execute(ctx)[0]


def _reference_hidden(text_encoder, text: str, layer: int) -> torch.Tensor:
    """ComfyUI's SD1 text conditioning written out: BOS, the words' tokens, EOS, padded with EOS to 77; the chosen
    layer's hidden state through the final layer norm (layer_norm_hidden_state)."""
    tokenizer = load_clip_tokenizer()
    words = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id, *words, tokenizer.eos_token_id]
    ids += [tokenizer.eos_token_id] * (77 - len(ids))
    with torch.no_grad():
        out = text_encoder(torch.tensor([ids]), output_hidden_states=True)
        inner = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 drops the wrapper
        return inner.final_layer_norm(out.hidden_states[layer])


def test_combine_with_strengths_is_the_strength_weighted_mean_of_unet_outputs(handles, tiny_parts, shared_executor):
    """ComfyUI's ConditioningCombine is list concatenation; the sampler's cond prediction is then
    (w_a * eps(A) + w_b * eps(B)) / (w_a + w_b), and CFG is applied to that. The reference calls the tiny UNet
    (diffusers, built separately) once per prompt."""
    model, clip, _ = handles
    ctx = run_context(shared_executor.env)
    a, b, n = (_encode(clip, text, ctx) for text in ("a red house", "a blue lake at night", "blurry"))
    a3 = ConditioningSetAreaStrength(conditioning=a, strength=3.0).execute(ctx)[0]
    b1 = ConditioningSetAreaStrength(conditioning=b, strength=1.0).execute(ctx)[0]
    combined = ConditioningCombine(conditioning_1=a3, conditioning_2=b1).execute(ctx)[0]
    assert len(combined) == 2
    assert torch.equal(combined[0][0], a[0][0]) and torch.equal(combined[1][0], b[0][0])
    assert [entry[1]["strength"] for entry in combined] == [3.0, 1.0]

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    with model.use() as unet:
        ours = guided(unet, x, t, combined, n, 4.0, model.denoiser())
    with torch.no_grad():
        eps = {name: tiny_parts.unet(x, t, encoder_hidden_states=c[0][0]).sample for name, c in
               (("a", a), ("b", b), ("n", n))}
    cond = (3.0 * eps["a"] + 1.0 * eps["b"]) / 4.0
    torch.testing.assert_close(ours, eps["n"] + 4.0 * (cond - eps["n"]), atol=1e-5, rtol=1e-5)
    # the weights matter: an unweighted mean or A alone is far from it
    for wrong in ((eps["a"] + eps["b"]) / 2, eps["a"]):
        assert float((ours - (eps["n"] + 4.0 * (wrong - eps["n"]))).abs().max()) > 1e-3


def test_set_latent_noise_mask_keeps_every_unmasked_latent_cell(shared_executor):
    """example_inpaint.png is transparent (mask 1) on pixel rows 88-119, columns 40-87: exactly latent rows 11-14,
    columns 5-10 of its 16x16 latent. After KSampler at denoise 1.0, the other cells equal the encoded image
    bit for bit and the masked ones are new; without the mask every cell changes."""
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example_inpaint.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "12": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["6", 0],
                                                   "latent_image": ["12", 0]}},
        "20": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "encoded"}},
        "21": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "masked"}},
    }
    unmasked = {k: v for k, v in workflow.items() if k != "12"} | {"3": {**workflow["3"], "inputs": {
        **workflow["3"]["inputs"], "latent_image": ["11", 0]}}}
    unmasked["21"] = {**workflow["21"], "inputs": {"samples": ["3", 0], "filename_prefix": "unmasked"}}

    def latents(prompt: dict, node: str) -> torch.Tensor:
        result = shared_executor.run(prompt)
        assert result.status == "success", result.error
        return load_file(shared_executor.env.folders.output_dir / result.outputs[node]["latents"][0]["filename"]
                         )["latent_tensor"]

    encoded, masked = latents(workflow, "20"), latents(workflow, "21")
    plain = latents(unmasked, "21")
    hole = torch.zeros(16, 16, dtype=torch.bool)
    hole[11:15, 5:11] = True
    assert encoded.shape == masked.shape == (1, 4, 16, 16)
    assert torch.equal(masked[..., ~hole], encoded[..., ~hole])
    assert (masked[..., hole] - encoded[..., hole]).abs().amin(dim=1).min() > 0  # every masked cell is new
    assert (plain[..., ~hole] - encoded[..., ~hole]).abs().amin(dim=1).min() > 0


@pytest.mark.parametrize("layer", [-1, -2])
def test_clip_set_last_layer_takes_that_hidden_state_through_the_final_norm(handles, tiny_parts, shared_executor,
                                                                           layer: int):
    _, clip, _ = handles
    ctx = run_context(shared_executor.env)
    stopped = CLIPSetLastLayer(clip=clip, stop_at_clip_layer=layer).execute(ctx)[0]
    [[ours, _]] = _encode(stopped, "a red house by the sea", ctx)
    reference = _reference_hidden(tiny_parts.text_encoder, "a red house by the sea", layer)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    other = _reference_hidden(tiny_parts.text_encoder, "a red house by the sea", -3 - layer)  # -1 <-> -2
    assert float((ours - other).abs().max()) > 1e-2
    [[unchanged, _]] = _encode(clip, "a red house by the sea", ctx)
    torch.testing.assert_close(unchanged, _reference_hidden(tiny_parts.text_encoder, "a red house by the sea", -1),
                               atol=1e-5, rtol=1e-5)  # the input CLIP is not changed in place
