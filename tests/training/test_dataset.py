"""The procedural dataset: deterministic, its held-out split is disjoint from training, and every caption says
what the pixels show (read back by the pixel classifier)."""

from __future__ import annotations

import numpy as np
from latentgraph.training import dataset
from latentgraph.training.classifier import classify


def test_samples_are_a_function_of_seed_and_index() -> None:
    first = [dataset.sample(3, i) for i in range(20)]
    again = [dataset.sample(3, i) for i in range(20)]
    for (a, caption_a, scene_a), (b, caption_b, scene_b) in zip(first, again):
        assert np.array_equal(a, b)
        assert caption_a == caption_b and scene_a == scene_b
    other = [dataset.sample(4, i)[0] for i in range(20)]
    assert any(not np.array_equal(a[0], b) for a, b in zip(first, other))


def test_held_out_triples_never_appear_in_training_and_every_attribute_stays_seen() -> None:
    held = set(dataset.held_out_triples())
    training = dataset.training_triples()
    assert held and not held & set(training)
    drawn = {(s.colour, s.shape, s.background) for s in (dataset.sample_scene(0, i) for i in range(2000))}
    assert not drawn & held
    for position in range(3):
        assert {t[position] for t in training} == {t[position] for t in dataset.all_triples()}


def test_captions_match_pixels() -> None:
    for index in range(300):
        pixels, caption, scene = dataset.sample(0, index)
        reading = classify(pixels)
        assert (reading.colour, reading.shape, reading.background) == (scene.colour, scene.shape, scene.background)
        assert (reading.size, reading.position) == (scene.size, scene.position)
        assert scene.colour in caption.lower() and scene.shape in caption.lower()  # CLIP's tokenizer lowercases


def test_a_caption_without_a_size_word_is_of_a_large_shape() -> None:
    """A prompt that names no size asks for a large shape: every small shape's caption says so (in one of its
    synonyms), about a third of the large ones' leave the size out."""
    unsized = {"small": 0, "large": 0}
    counts = {"small": 0, "large": 0}
    for index in range(600):
        scene = dataset.sample_scene(0, index)
        for variant in range(2):
            caption = f" {dataset.sample_caption(scene, 0, index, variant).lower()} "
            counts[scene.size] += 1
            unsized[scene.size] += not any(f" {w} " in caption for w in dataset.SIZE_WORDS[scene.size])
    assert unsized["small"] == 0
    assert 0.25 < unsized["large"] / counts["large"] < 0.45, unsized


def test_classifier_sees_no_shape_on_a_blank_image() -> None:
    blank = np.full((64, 64, 3), dataset.COLOURS["blue"], dtype=np.uint8)
    reading = classify(blank)
    assert reading.background == "blue" and reading.shape == "none"


def test_written_folder_has_a_caption_per_image(tmp_path) -> None:
    scenes = dataset.held_out_scenes(3)
    paths = dataset.write_folder(scenes, tmp_path)
    assert [p.with_suffix(".txt").read_text().strip() for p in paths] == [s.caption() for s in scenes]
