"""Upscale models through spandrel: tiny ESRGAN, Real-ESRGAN Compact and SwinIR files built with spandrel's own
architecture classes (random weights, fixed seeds), run by the nodes and compared with spandrel's descriptor called
on the whole image; tiling seams; the out-of-memory back-off; pickles refused unless allowed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.sd.upscale_nodes import (
    INSTALL_HINT,
    ImageUpscaleWithModel,
    UpscaleModelLoader,
    Upscaler,
    spandrel,
    tiled_upscale,
    upscale_with_model,
)
from PIL import Image
from safetensors.torch import save_file

from tests.nodes.sd.sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    spandrel()
except ModuleNotFoundError as missing:  # an environment without spandrel says so, by name, in the skip reason
    pytest.skip(f"{INSTALL_HINT} ({missing})", allow_module_level=True)


def esrgan_state(seed: int = 0) -> dict[str, torch.Tensor]:
    spandrel()  # imports spandrel (with the torchvision placeholder where needed) before its architectures
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict()


def swinir_state(seed: int = 0) -> dict[str, torch.Tensor]:
    spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    return SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                  upsampler="pixelshuffledirect").state_dict()


def compact_upscaler(seed: int = 0) -> Upscaler:
    library = spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    state = Compact(num_in_ch=3, num_out_ch=3, num_feat=4, num_conv=2, upscale=2).state_dict()
    return Upscaler(library.ModelLoader().load_from_state_dict(state).eval())


def reference(state: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """spandrel's descriptor called on the whole image (channel-first), as a plain user of spandrel would."""
    descriptor = spandrel().ModelLoader().load_from_state_dict(state).eval()
    with torch.inference_mode():
        return descriptor(image.movedim(-1, 1)).movedim(1, -1)


@pytest.fixture
def executor(tmp_path: Path) -> Executor:
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    save_file(esrgan_state(), str(folder / "tiny-esrgan.safetensors"))
    save_file(swinir_state(), str(folder / "tiny-swinir.safetensors"))
    torch.save(esrgan_state(), folder / "tiny-esrgan.pth")
    save_file({"not.a.model": torch.zeros(3)}, str(folder / "junk.safetensors"))
    return Executor(load_registry(plugins=False), make_environment(tmp_path))


def upscale_workflow(model_name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }


def test_esrgan_workflow_doubles_the_size(executor: Executor) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(
        executor.env.folders.input_dir / "in.png")
    info = executor.registry.object_info(executor.env, "UpscaleModelLoader")["UpscaleModelLoader"]
    assert info["display_name"] == "Load Upscale Model"
    assert "tiny-esrgan.safetensors" in info["input"]["required"]["model_name"][0]
    result = executor.run(upscale_workflow("tiny-esrgan.safetensors"))
    assert result.status == "success", result.error
    with Image.open(executor.env.folders.output_dir / "up_00001_.png") as png:
        assert png.size == (56, 40)


@pytest.mark.parametrize(("name", "state_fn"), [("tiny-esrgan.safetensors", esrgan_state),
                                                ("tiny-swinir.safetensors", swinir_state)])
def test_nodes_equal_spandrel_on_the_whole_image(executor: Executor, name: str, state_fn) -> None:
    ctx = run_context(executor.env)
    image = torch.rand(2, 18, 22, 3, generator=torch.Generator().manual_seed(1))  # SwinIR pads 18x22 to its window
    (handle,) = UpscaleModelLoader(model_name=name).execute(ctx)
    assert handle.scale == 2
    (out,) = ImageUpscaleWithModel(upscale_model=handle, image=image).execute(ctx)
    assert out.shape == (2, 36, 44, 3)
    expected = torch.cat([reference(state_fn(), image[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_tiles_blend_to_the_untiled_result() -> None:
    pixels = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    # A pointwise function must come out exactly: this checks tile placement and the blend weights.
    nearest = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    torch.testing.assert_close(tiled_upscale(pixels, nearest, 2, 3, tile=24, overlap=8), nearest(pixels))
    # A real network sees less context near tile edges; the ramps keep the seams small.
    library = spandrel()
    model = Upscaler(library.ModelLoader().load_from_state_dict(esrgan_state()).eval())
    with torch.inference_mode():
        whole = tiled_upscale(pixels, model, 2, 3, tile=64, overlap=8)
        tiled = tiled_upscale(pixels, model, 2, 3, tile=24, overlap=8)
    difference = (whole - tiled).abs()
    assert float(difference.max()) < 0.02 and float(difference.mean()) < 1e-3


class OutOfMemoryAbove(Upscaler):
    """A real Compact model that raises torch's out-of-memory error for tiles above a size, like a small GPU."""

    def __init__(self, model: Upscaler, limit: int) -> None:
        super().__init__(model._descriptor)
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(pixels.shape[-2:]))
        if max(pixels.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("simulated: tile too large")
        return super().forward(pixels)


def test_out_of_memory_halves_the_tile_down_to_128() -> None:
    image = torch.rand(1, 300, 300, 3, generator=torch.Generator().manual_seed(3))
    model = OutOfMemoryAbove(compact_upscaler(), limit=128)
    out = upscale_with_model(model, image, torch.device("cpu"))
    assert model.sizes[0] == 300 and 256 in model.sizes and max(model.sizes[-9:]) == 128
    plain = compact_upscaler()
    expected = tiled_upscale(image.movedim(-1, 1), plain, 2, 3, tile=128, overlap=32).movedim(1, -1).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(torch.OutOfMemoryError):
        upscale_with_model(OutOfMemoryAbove(compact_upscaler(), limit=100), image, torch.device("cpu"))


def test_pickles_are_refused_unless_allowed(executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (12, 12), (10, 200, 30)).save(executor.env.folders.input_dir / "in.png")
    monkeypatch.delenv("LATENTGRAPH_ALLOW_PICKLE", raising=False)
    refused = executor.run(upscale_workflow("tiny-esrgan.pth"))
    assert refused.status == "error"
    assert "pickled" in refused.error["exception_message"]
    assert "LATENTGRAPH_ALLOW_PICKLE" in refused.error["exception_message"]
    monkeypatch.setenv("LATENTGRAPH_ALLOW_PICKLE", "1")
    allowed = executor.run(upscale_workflow("tiny-esrgan.pth"))
    assert allowed.status == "success", allowed.error
    safe = executor.run(upscale_workflow("tiny-esrgan.safetensors"))
    outputs = executor.env.folders.output_dir
    pickled_png, safe_png = (np.asarray(Image.open(outputs / f"up_0000{i}_.png")) for i in (1, 2))
    assert safe.status == "success" and np.array_equal(pickled_png, safe_png)


def test_the_torchvision_placeholder_does_not_outlive_the_import() -> None:
    """Other libraries probe for torchvision; they must find the real one or none, never the placeholder."""
    spandrel()
    module = sys.modules.get("torchvision")
    assert module is None or hasattr(module, "__version__")


def test_a_file_spandrel_does_not_know_is_an_error(executor: Executor) -> None:
    Image.new("RGB", (12, 12)).save(executor.env.folders.input_dir / "in.png")
    result = executor.run(upscale_workflow("junk.safetensors"))
    assert result.status == "error"
    assert "does not recognise" in result.error["exception_message"]
