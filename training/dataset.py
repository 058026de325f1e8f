"""A procedural, captioned dataset of coloured shapes: the data the bundled demo model learns from.

Every sample is a pure function of (seed, index), so the dataset never has to be stored and two machines draw
the same images. Some (colour, shape, background) combinations are held out of training so that evaluation
asks the model for scenes it has never seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (245, 130, 20),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, int] = {"small": 20, "large": 36}
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "in the center": (0.5, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
}
SUPERSAMPLE = 4
HELD_OUT_SEED = 1234


@dataclass(frozen=True)
class Scene:
    """What one image shows; the caption is derived from it."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    jitter: tuple[int, int] = (0, 0)

    def caption(self, *, size: bool = True, position: bool = True, background: bool = True) -> str:
        parts = ["a"] + ([self.size] if size else []) + [self.colour, self.shape]
        text = " ".join(parts)
        if position:
            text += f" {self.position}"
        if background:
            text += f", on a {self.background} background"
        return text


def all_triples() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) with the shape's colour different from the background's."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


def held_out_triples() -> list[tuple[str, str, str]]:
    """A fixed eighth of the triples, never drawn for training; every colour, shape and background stays seen."""
    triples = all_triples()
    rng = random.Random(HELD_OUT_SEED)
    rng.shuffle(triples)
    held: list[tuple[str, str, str]] = []
    kept = set(triples)
    for triple in triples:
        if len(held) >= len(triples) // 8:
            break
        rest = kept - {triple}
        c, s, b = triple
        if any(t[0] == c for t in rest) and any(t[1] == s for t in rest) and any(t[2] == b for t in rest):
            held.append(triple)
            kept = rest
    return sorted(held)


def training_triples() -> list[tuple[str, str, str]]:
    held = set(held_out_triples())
    return [t for t in all_triples() if t not in held]


def _star_points(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    inner = radius * 0.42
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def render(scene: Scene, resolution: int = 64, palette: dict[str, tuple[int, int, int]] | None = None) -> Image.Image:
    """Draw a scene (anti-aliased by drawing large and shrinking) as an RGB image; `palette` adds colours."""
    colours = {**COLOURS, **(palette or {})}
    big = resolution * SUPERSAMPLE
    image = Image.new("RGB", (big, big), colours[scene.background])
    draw = ImageDraw.Draw(image)
    scale = big / 64
    extent = SIZES[scene.size] * scale
    fx, fy = POSITIONS[scene.position]
    cx = fx * big + scene.jitter[0] * scale
    cy = fy * big + scene.jitter[1] * scale
    half = extent / 2
    fill = colours[scene.colour]
    box = (cx - half, cy - half, cx + half, cy + half)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif scene.shape == "star":
        draw.polygon(_star_points(cx, cy + half * 0.1, half * 1.05), fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def sample_scene(seed: int, index: int, triples: list[tuple[str, str, str]] | None = None) -> Scene:
    """The scene of sample `index`; a pure function of its arguments."""
    rng = random.Random(f"{seed}:{index}")
    colour, shape, background = rng.choice(triples if triples is not None else training_triples())
    return Scene(
        colour=colour,
        shape=shape,
        size=rng.choice(list(SIZES)),
        position=rng.choice(list(POSITIONS)),
        background=background,
        jitter=(rng.randint(-3, 3), rng.randint(-3, 3)),
    )


SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny", "smaller", "small-sized"),
    "large": ("large", "big", "huge", "larger", "giant"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "on the left": ("on the left", "at the left", "to the left", "on the left side", "left", "at left"),
    "on the right": ("on the right", "at the right", "to the right", "on the right side", "right", "at right"),
    "in the center": ("in the center", "in the middle", "in the centre", "centered", "at the center", "center"),
    "at the top": ("at the top", "on top", "near the top", "at the top edge", "top", "up top"),
    "at the bottom": ("at the bottom", "near the bottom", "at the bottom edge", "on the bottom", "bottom", "down low"),
}
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
ORIGINAL_TEMPLATE_SHARE = 0.25
UNSIZED_SHARE = 0.35  # of large shapes' captions
# Sentence forms for the varied captions. {obj} is the object phrase ("a big red circle"), {bare} the same
# without article, {pos} the position words ("" when dropped), {bg} the background colour.
_FORMS: tuple[str, ...] = (
    "{obj}{pos} on a {bg} background",
    "{obj}{pos}, {bg} background",
    "{bare}{pos} on {bg}",
    "{bare}{pos}, on {bg}",
    "{obj}{pos} on {bg}",
    "a {bg} background with {obj}{pos}",
    "{bg} background with {obj}{pos}",
    "{bg} background, {bare}{pos}",
    "{obj} on a {bg} background{pos}",
    "{obj}{pos} against a {bg} background",
    "{bare}{pos} with a {bg} background",
    "{obj}{pos} with {bg} background",
    "{bare} on {bg} background{pos}",
    "on a {bg} background, {obj}{pos}",
)


def _object_phrase(scene: Scene, rng: random.Random, size: bool) -> tuple[str, str]:
    """(with article, without): size synonym or none, colour, shape or its plural (a slip people make)."""
    words = ([rng.choice(SIZE_WORDS[scene.size])] if size else []) + [scene.colour]
    words.append(PLURALS[scene.shape] if rng.random() < 0.1 else scene.shape)
    bare = " ".join(words)
    article = rng.choice(("a", "a", "one", "an" if bare[0] in "aeiou" else "a", "the", ""))
    return f"{article} {bare}".lstrip(), bare


def varied_caption(scene: Scene, rng: random.Random, *, size: bool = True, position: bool = True,
                   background: bool = True) -> str:
    """One of many phrasings a person might type for the scene: word order, with or without commas and
    articles, "X on Y", "X, Y background", "a Y background with a X", synonyms for sizes and positions, plural
    slips. Pure in `rng`, so a caption is a function of the seed it was drawn with."""
    obj, bare = _object_phrase(scene, rng, size)
    pos = ""
    if position:
        words = rng.choice(POSITION_WORDS[scene.position])
        pos = f", {words}" if rng.random() < 0.25 else f" {words}"
    if not background:
        return f"{rng.choice((obj, bare))}{pos}"
    text = rng.choice(_FORMS).format(obj=obj, bare=bare, pos=pos, bg=scene.background)
    if rng.random() < 0.1:
        text = text.replace(",", "")
    if rng.random() < 0.1:
        text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.1 else "")


def sample_caption(scene: Scene, seed: int, index: int, variant: int = 0) -> str:
    """A caption of sample `index`: the original template (a share of the time, so prompts of that form keep
    working) or a varied phrasing; 35% of large shapes' captions drop the size, 20% drop the position, 5% the
    background, so shorter prompts work too. A small shape's caption always says so: a prompt that names no size
    then asks for a large shape, the subject drawn big and clear rather than a toss-up (small stars and squares are
    what this model draws worst). `variant` draws another caption of the same sample (a training pool keeps several
    per image)."""
    rng = random.Random(f"caption:{seed}:{index}" + (f":{variant}" if variant else ""))
    size = rng.random() > UNSIZED_SHARE or scene.size != "large"
    parts = {"size": size, "position": rng.random() > 0.2, "background": rng.random() > 0.05}
    if rng.random() < ORIGINAL_TEMPLATE_SHARE:
        return scene.caption(**parts)
    return varied_caption(scene, rng, **parts)


def sample(seed: int, index: int, resolution: int = 64) -> tuple[np.ndarray, str, Scene]:
    """One training sample: HxWx3 uint8 pixels, its caption and its scene."""
    scene = sample_scene(seed, index)
    return np.asarray(render(scene, resolution)), sample_caption(scene, seed, index), scene


def held_out_scenes(count: int, seed: int = 7) -> list[Scene]:
    """Evaluation scenes: held-out triples with seeded sizes and positions, cycling through every triple."""
    held = held_out_triples()
    rng = random.Random(seed)
    scenes = []
    for i in range(count):
        colour, shape, background = held[i % len(held)]
        scenes.append(Scene(colour, shape, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)), background))
    return scenes


def write_folder(scenes: list[Scene], folder: Path, resolution: int = 64,
                 palette: dict[str, tuple[int, int, int]] | None = None) -> list[Path]:
    """Write scenes as a kohya-style folder (NAME.png + NAME.txt caption), e.g. for LoRA training."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        path = folder / f"{i:05d}.png"
        render(scene, resolution, palette).save(path)
        path.with_suffix(".txt").write_text(scene.caption() + "\n")
        paths.append(path)
    return paths
