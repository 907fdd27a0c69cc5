"""Tests of the procedural image world: spec checks, class recipes, determinism and labels."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from unitablation.world import (
    COLOR_NAMES,
    COLORS,
    DISTRACTOR_SCALE,
    MAIN_SCALE,
    PALETTE,
    PARTS,
    RECIPES,
    SHADES,
    SHAPES,
    TEXTURES,
    Scene,
    WorldSpec,
    class_names,
    generate_split,
    render_scene,
    scene_rng,
    shape_sdf,
    split_size,
)

SMALL = WorldSpec(image_size=32, n_classes=4, train_per_class=3, val_per_class=2, concept_images=10)


def assert_same_scene(a: Scene, b: Scene) -> None:
    """Assert two scenes have byte-identical images and identical labels."""
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.class_index, a.scene, a.texture, a.background) == (
        b.class_index,
        b.scene,
        b.texture,
        b.background,
    )
    np.testing.assert_array_equal(a.color, b.color)
    for mine, theirs in ((a.object_layers, b.object_layers), (a.part_layers, b.part_layers)):
        assert len(mine) == len(theirs)
        for x, y in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    """Four scenes per class of the default 12-class world, noise included."""
    return list(generate_split(WorldSpec(), "val", 4))


@pytest.fixture(scope="module")
def clean_scenes() -> list[Scene]:
    """Four noise-free scenes per class, for exact colour checks."""
    return list(generate_split(WorldSpec(noise=0.0), "val", 4))


# --- spec and vocabulary ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 15),
        ("image_size", 14),
        ("image_size", 0),
        ("n_classes", 1),
        ("n_classes", len(RECIPES) + 1),
        ("train_per_class", 0),
        ("val_per_class", -1),
        ("concept_images", 0),
        ("noise", -0.01),
        ("max_distractors", -1),
        ("seed", -1),
    ],
)
def test_validate_names_the_bad_field(field: str, value: object) -> None:
    spec = dataclasses.replace(WorldSpec(), **{field: value})
    with pytest.raises(ValueError, match=field):
        spec.validate()


def test_generation_validates_the_spec() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        next(generate_split(WorldSpec(n_classes=1), "train"))
    with pytest.raises(ValueError, match="split"):
        next(generate_split(SMALL, "test"))


def test_vocabulary_is_large_enough_and_names_are_unique() -> None:
    assert len(SHAPES) >= 8 and len(COLORS) >= 10 and len(TEXTURES) >= 6 and len(RECIPES) >= 16
    names = [*SHAPES, *PARTS, *COLOR_NAMES, *TEXTURES, *(r.name for r in RECIPES)]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("n", range(2, len(RECIPES) + 1))
def test_class_names_are_sorted_lowercase_words(n: int) -> None:
    names = class_names(dataclasses.replace(WorldSpec(), n_classes=n))
    assert len(names) == n and names == sorted(names)
    assert all(name.isalpha() and name.islower() for name in names)


@pytest.mark.parametrize("n", [12, len(RECIPES)])
def test_every_concept_matters_for_some_but_not_all_classes(n: int) -> None:
    uses: Counter[str] = Counter()
    for recipe in RECIPES[:n]:
        uses.update({*recipe.textures, *recipe.backgrounds, *recipe.shapes, *recipe.colors})
    for concept in (*SHAPES, *COLOR_NAMES, *TEXTURES):
        assert 2 <= uses[concept] < n, concept


def test_no_two_classes_share_a_texture_shape_pair() -> None:
    owners: dict[tuple[str, str], str] = {}
    for recipe in RECIPES:
        for pair in ((t, s) for t in recipe.textures for s in recipe.shapes):
            assert pair not in owners, f"{recipe.name} and {owners[pair]} share {pair}"
            owners[pair] = recipe.name


def test_recipes_use_the_vocabulary_with_contrasting_colours() -> None:
    for recipe in RECIPES:
        assert set(recipe.textures) <= set(TEXTURES) and set(recipe.shapes) <= set(SHAPES)
        assert set(recipe.backgrounds) | set(recipe.colors) <= set(COLOR_NAMES)
        assert not set(recipe.backgrounds) & set(recipe.colors), recipe.name
        assert 1 <= recipe.count[0] <= recipe.count[1]


# --- determinism -----------------------------------------------------------------------------


def test_same_spec_gives_identical_scenes() -> None:
    for a, b in zip(generate_split(SMALL, "train"), generate_split(SMALL, "train"), strict=True):
        assert_same_scene(a, b)


def test_seed_and_split_change_the_images() -> None:
    base = [s.image for s in generate_split(SMALL, "train")]
    reseeded = [s.image for s in generate_split(dataclasses.replace(SMALL, seed=1), "train")]
    val = [s.image for s in generate_split(SMALL, "val", 3)]
    assert all(not np.array_equal(a, b) for a, b in zip(base, reseeded, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(base, val, strict=True))


def test_scene_does_not_depend_on_how_many_are_generated() -> None:
    few = list(generate_split(SMALL, "train", 1))
    many = list(generate_split(SMALL, "train", 5))
    assert len(few) == 4 and len(many) == 20
    for a, b in zip(few, many[:4], strict=True):
        assert_same_scene(a, b)
    # ... nor on the number of classes, nor on calling order.
    wider = list(generate_split(dataclasses.replace(SMALL, n_classes=6), "train", 2))
    assert_same_scene(many[4 + 2], wider[6 + 2])  # class 2, second image
    direct = render_scene(scene_rng(SMALL, "train", 3, 4), 3, SMALL)
    assert_same_scene(direct, many[4 * 4 + 3])


def test_scene_streams_are_independent_across_classes_splits_and_seeds() -> None:
    keys = [
        (SMALL, "train", 0, 0),
        (SMALL, "train", 1, 0),
        (SMALL, "train", 0, 1),
        (SMALL, "val", 0, 0),
    ]
    keys.append((dataclasses.replace(SMALL, seed=1), "train", 0, 0))
    draws = [tuple(scene_rng(*key).random(4)) for key in keys]
    assert len(set(draws)) == len(draws)


def test_split_sizes_and_class_cycling() -> None:
    assert len(list(generate_split(SMALL, "train"))) == split_size(SMALL, "train") == 12
    assert split_size(SMALL, "val") == 8
    concept = list(generate_split(SMALL, "concept"))
    assert len(concept) == SMALL.concept_images
    assert [s.class_index for s in concept] == [k % 4 for k in range(10)]
    assert all(s.scene == s.class_index for s in concept)


def test_noise_changes_pixels_but_not_labels() -> None:
    noisy = list(generate_split(SMALL, "val"))
    clean = list(generate_split(dataclasses.replace(SMALL, noise=0.0), "val"))
    for a, b in zip(noisy, clean, strict=True):
        np.testing.assert_array_equal(a.color, b.color)
        diff = a.image.astype(float) - b.image.astype(float)
        assert 0.5 * 0.04 * 255 < diff.std() < 1.5 * 0.04 * 255


# --- labels ----------------------------------------------------------------------------------


def test_label_shapes_ranges_and_recipe_choices(default_scenes: list[Scene]) -> None:
    for s in default_scenes:
        recipe = RECIPES[s.class_index]
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.color.shape == (32, 32) and s.color.min() >= 1 and s.color.max() <= len(COLORS)
        assert s.object_layers and s.part_layers
        for layer in (*s.object_layers, *s.part_layers):
            assert layer.shape == (32, 32) and layer.min() >= 0 and layer.max() <= len(SHAPES)
            assert layer.any()  # no empty layers
        assert TEXTURES[s.texture] in recipe.textures
        assert COLOR_NAMES[s.background] in recipe.backgrounds
        mains = [o for o in s.objects if o.main]
        assert recipe.count[0] <= len(mains) <= recipe.count[1]
        assert len(s.objects) - len(mains) <= WorldSpec().max_distractors
        for o in mains:
            assert SHAPES[o.shape] in recipe.shapes and COLOR_NAMES[o.color] in recipe.colors
            assert MAIN_SCALE[0] <= 2 * o.radius <= MAIN_SCALE[1]
        for o in s.objects:
            assert o.main or (
                DISTRACTOR_SCALE[0] <= 2 * o.radius <= DISTRACTOR_SCALE[1]
                and o.color != s.background
            )


def _seg_coverage(scene: Scene, n: int) -> list[np.ndarray]:
    """Per object (drawing order), its inside mask on the n x n segmentation grid, full-grid SDF."""
    t = (np.arange(n) + 0.5) / n
    masks = []
    for o in scene.objects:
        dx, dy = t[None, :] - o.cx, t[:, None] - o.cy
        c, s = np.cos(o.angle), np.sin(o.angle)
        masks.append(shape_sdf(o.shape, dx * c + dy * s, -dx * s + dy * c, o.radius) <= 0)
    return masks


def test_layers_stack_objects_top_first_and_colour_is_the_topmost(
    default_scenes: list[Scene],
) -> None:
    multi = 0
    for s in default_scenes:
        masks = _seg_coverage(s, 32)
        depth = np.sum(masks, axis=0)
        layers = np.stack(s.object_layers)
        np.testing.assert_array_equal((layers != 0).sum(axis=0), depth)
        assert np.all((layers[1:] == 0) | (layers[:-1] != 0))  # packed: no gaps above
        top_shape = np.zeros((32, 32), int)
        top_color = np.full((32, 32), s.background + 1)
        for o, m in zip(s.objects, masks, strict=True):  # bottom first, later ones overwrite
            top_shape[m], top_color[m] = o.shape + 1, o.color + 1
        np.testing.assert_array_equal(layers[0], top_shape)
        np.testing.assert_array_equal(s.color, top_color)
        multi += len(s.object_layers) > 1
    assert multi >= 3  # overlapping objects really produce multi-layer masks


def test_main_object_centres_are_labelled_with_their_shape(default_scenes: list[Scene]) -> None:
    checked = 0
    for s in default_scenes:
        for o in s.objects:
            if o.main and SHAPES[o.shape] != "ring":  # a ring's centre is its hole
                r, c = int(o.cy * 32), int(o.cx * 32)
                assert o.shape + 1 in [layer[r, c] for layer in s.object_layers]
                checked += 1
    assert checked > 40


def test_parts_are_object_rims(default_scenes: list[Scene]) -> None:
    part_pixels = object_pixels = multi = 0
    for s in default_scenes:
        objects, parts = np.stack(s.object_layers), np.stack(s.part_layers)
        for label in range(1, len(PARTS) + 1):
            # wherever k rims of shape `label` overlap, at least k objects of that shape do
            assert np.all((parts == label).sum(axis=0) <= (objects == label).sum(axis=0))
        part_pixels += int((parts != 0).any(axis=0).sum())
        object_pixels += int((objects != 0).any(axis=0).sum())
        multi += len(s.part_layers) > 1
        # a main circle's centre is far from its boundary: the circle is there, its rim is not
        for o in s.objects:
            if o.main and SHAPES[o.shape] == "circle":
                r, c = int(o.cy * 32), int(o.cx * 32)
                assert (parts[:, r, c] == o.shape + 1).sum() < (
                    objects[:, r, c] == o.shape + 1
                ).sum()
    assert 0.2 * object_pixels < part_pixels < 0.9 * object_pixels
    assert multi >= 3


def _interior(label: np.ndarray) -> np.ndarray:
    """Segmentation pixels whose 3 x 3 neighbourhood carries the same label."""
    padded = np.pad(label, 1, mode="edge")
    same = np.ones(label.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


def _blocks(image: np.ndarray) -> np.ndarray:
    """The 2 x 2 image pixels under each segmentation pixel, as (sh, sw, 4, 3)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image.reshape(h, 2, w, 2, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, 4, 3).astype(float)


def test_colour_labels_match_noise_free_pixels(clean_scenes: list[Scene]) -> None:
    good = total = 0
    for s in clean_scenes:
        on_object = np.stack(s.object_layers).any(axis=0)
        keys = s.color * 2 + on_object  # interior of one colour *and* one kind of region
        interior = _interior(keys) & _interior(np.stack(s.object_layers)[0])
        blocks = _blocks(s.image)
        for r, c in zip(*np.nonzero(interior), strict=True):
            k = s.color[r, c] - 1
            refs = [PALETTE[k]] if on_object[r, c] else [PALETTE[k], SHADES[k]]
            err = np.min([np.abs(blocks[r, c] - ref).max(axis=1) for ref in refs], axis=0)
            good += int(np.all(err <= 1.0))
            total += 1
    assert total > 5000 and good >= 0.99 * total


def test_colour_labels_match_noisy_pixels_by_nearest_colour(default_scenes: list[Scene]) -> None:
    refs = np.concatenate([PALETTE, SHADES])  # colour k or its texture shade
    good = total = 0
    for s in default_scenes:
        interior = _interior(s.color) & _interior(np.stack(s.object_layers)[0])
        pixels = _blocks(s.image)[interior]  # (n, 4, 3)
        nearest = np.linalg.norm(pixels[:, :, None, :] - refs, axis=-1).argmin(axis=-1) % len(
            COLORS
        )
        good += int((nearest == (s.color[interior] - 1)[:, None]).sum())
        total += nearest.size
    assert total > 20000 and good >= 0.97 * total


def test_textures_are_drawn_in_two_tones(clean_scenes: list[Scene]) -> None:
    for s in clean_scenes:
        background = _interior(s.color) & ~np.stack(s.object_layers).any(axis=0)
        pixels = _blocks(s.image)[background].reshape(-1, 3)
        base = np.abs(pixels - PALETTE[s.background]).max(axis=1) <= 1
        shade = np.abs(pixels - SHADES[s.background]).max(axis=1) <= 1
        assert base.mean() > 0.15 and shade.mean() > 0.1 and (base | shade).mean() > 0.97
