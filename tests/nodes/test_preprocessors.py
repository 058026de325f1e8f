"""Canny as ComfyUI runs it (kornia.filters.canny with its default 5x5 Gaussian, sigma 1): against kornia itself,
the library ComfyUI calls, and on a hand-worked step edge."""

from __future__ import annotations

import pytest
import torch
from latentgraph.nodes.preprocessor_nodes import Canny, canny

kornia = pytest.importorskip("kornia")  # a test extra: pip install -e .[test]


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.05, 0.2), (0.1, 0.3)])
@pytest.mark.parametrize("blur", [False, True])
def test_canny_equals_kornia(low: float, high: float, blur: bool) -> None:
    generator = torch.Generator().manual_seed(int(low * 100) + blur)
    if blur:  # blurred blocks: long edges of every strength, which exercise the hysteresis
        blocks = torch.rand(2, 3, 6, 7, generator=generator)
        image = torch.nn.functional.interpolate(blocks, size=(37, 45), mode="nearest")
        image = kornia.filters.gaussian_blur2d(image, (7, 7), (2.0, 2.0))
    else:
        image = torch.rand(2, 3, 37, 45, generator=generator)
    reference = kornia.filters.canny(image, low, high)[1]
    assert reference.sum() > 0
    assert torch.equal(canny(image, low, high), reference)


def test_step_edge_by_hand() -> None:
    """Worked by hand. A black|white step between columns 7 and 8: the blurred step is symmetric about 7.5, so the
    Sobel magnitude is equal at columns 7 and 8 and non-maximum suppression (strictly above both neighbours across
    the edge) keeps neither: no edge. A one-column line at 8: blurred (weights .054 .242 .399 .242 .054) it gives
    gx = 4 * (.399 - .054) = 1.38 at columns 7 and 9, 4 * .242 = .97 at 6 and 10, 0 at 8, so the edges are columns
    7 and 9 in every row, well above the high threshold 0.2."""
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0
    assert canny(image, 0.1, 0.2).sum() == 0  # the two equal maxima suppress each other
    line = torch.zeros(1, 1, 16, 16)
    line[..., 8] = 1.0
    edges = canny(line, 0.1, 0.2)[0, 0]
    expected = torch.zeros(16, 16)
    expected[:, 7] = expected[:, 9] = 1.0  # gradient maxima on each flank of the line, every row
    assert torch.equal(edges, expected)


def test_node_returns_an_rgb_edge_image() -> None:
    image = torch.rand(1, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    (out,) = Canny(image=image, low_threshold=0.1, high_threshold=0.3).execute(None)  # type: ignore[arg-type]
    assert out.shape == (1, 24, 24, 3) and torch.equal(out[..., 0], out[..., 2])
    assert torch.equal(out[..., 0], canny(image.movedim(-1, 1), 0.1, 0.3)[:, 0])
