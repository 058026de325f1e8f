"""A deterministic pixel-level classifier for the shapes dataset: reads colour, shape, background, size and
position back from an image. It checks that the dataset's captions match its pixels and scores what the demo
model draws, so it uses only robust statistics (medians, the largest blob, fill ratios)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from latentgraph.training.dataset import COLOURS, POSITIONS, SHAPES, SIZES, Scene, render
from PIL import Image
from scipy import ndimage

BORDER = 3
MIN_AREA = 12
_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)
_MIN_GAP = min(
    float(np.linalg.norm(a - b)) for i, a in enumerate(_PALETTE) for j, b in enumerate(_PALETTE) if i < j
)


@dataclass(frozen=True)
class Reading:
    """What the classifier sees; "none" where no shape stands out from the background."""

    colour: str
    shape: str
    background: str
    size: str
    position: str


def nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - rgb, axis=1)))]


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if array.max() <= 1.0:
        array = array * 255.0
    return array[..., :3]


def _shape_mask(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    distance = np.linalg.norm(pixels - background, axis=-1)
    mask = distance > _MIN_GAP / 2
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _features(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(fill ratio of the bounding box, vertical centroid offset / height, sqrt(area), box centre x, y)."""
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    width = xs.max() - xs.min() + 1
    fill = len(ys) / float(height * width)
    offset = (ys.mean() - (ys.min() + ys.max()) / 2) / height
    return fill, offset, float(np.sqrt(len(ys))), (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


@cache
def _prototypes(resolution: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Features of every (shape, size) as the dataset draws it at the centre."""
    result = {}
    for shape in SHAPES:
        for size in SIZES:
            scene = Scene("black", shape, size, "in the center", "white")
            pixels = _to_array(render(scene, resolution))
            fill, offset, root_area, _, _ = _features(_shape_mask(pixels, np.array(COLOURS["white"], np.float32)))
            result[(shape, size)] = (fill, offset, root_area)
    return result


def shape_rgb(image: Image.Image | np.ndarray) -> np.ndarray | None:
    """The median colour of the shape (the largest blob that stands out from the background), or None."""
    pixels = _to_array(image)
    background = np.median(_border(pixels), axis=0)
    mask = _shape_mask(pixels, background)
    if mask.sum() < MIN_AREA * (pixels.shape[0] / 64) ** 2:
        return None
    core = ndimage.binary_erosion(mask)
    return np.median(pixels[core if core.sum() >= 4 else mask], axis=0)


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            pixels[:BORDER].reshape(-1, 3),
            pixels[-BORDER:].reshape(-1, 3),
            pixels[:, :BORDER].reshape(-1, 3),
            pixels[:, -BORDER:].reshape(-1, 3),
        ]
    )


def classify(image: Image.Image | np.ndarray) -> Reading:
    """Reads a scene back from an RGB image (PIL, HxWx3 uint8, or floats in 0..1)."""
    pixels = _to_array(image)
    resolution = pixels.shape[0]
    background_rgb = np.median(_border(pixels), axis=0)
    background = nearest_colour(background_rgb)
    mask = _shape_mask(pixels, background_rgb)
    if mask.sum() < MIN_AREA * (resolution / 64) ** 2:
        return Reading("none", "none", background, "none", "none")
    core = ndimage.binary_erosion(mask)
    colour = nearest_colour(np.median(pixels[core if core.sum() >= 4 else mask], axis=0))
    fill, offset, root_area, cx, cy = _features(mask)
    best = min(
        _prototypes(resolution).items(),
        key=lambda item: (item[1][0] - fill) ** 2 + (2 * (item[1][1] - offset)) ** 2,
    )
    shape = best[0][0]
    size = min(SIZES, key=lambda s: abs(_prototypes(resolution)[(shape, s)][2] - root_area))
    position = min(
        POSITIONS,
        key=lambda p: (POSITIONS[p][0] * resolution - cx) ** 2 + (POSITIONS[p][1] * resolution - cy) ** 2,
    )
    return Reading(colour, shape, background, size, position)
