"""World 2: world 1 untouched, backgrounds named and kept apart from object colours, exact masks under occlusion,
keypoint visibility, and a parser that reads the renders (background name included)."""
import dataclasses
import functools
import hashlib

import numpy as np
import pytest
from scipy import ndimage

from lab.world import (COLOURS, HELDOUT_PAIRS, HELDOUT_RELATIONS, keypoints_visible, make_scene, masks, parse,
                       render, score)
from lab.world import backgrounds
from lab.world.world2 import MIN_VISIBLE, visible_coverage

# Computed with the code before world 2 existed (commit 44981c5): sha256 of render(scene).tobytes() and of
# masks(scene).tobytes(), first 16 hex digits, and the caption.
WORLD1 = [
    (0, "train", "a small yellow hexagon to the left of a large green arrow pointing right on a white background",
     "73d714d905176a8e", "8c489969e8d8ac15"),
    (1, "train", "a large purple hexagon, a small red hexagon and a large purple triangle on a white background",
     "22dc71fad870c6e6", "d11539c00442a2c0"),
    (3, "test", "a small yellow hexagon on a white background", "0753635eaafd827d", "7e65233e7888b369"),
    (5, "heldout", "a small purple square below a large orange circle on a black background",
     "da293789b550c28a", "818377d20935a3d9"),
    (123456, "train", "a small green square to the left of a small blue circle on a white background",
     "3fe05ba516ba9a21", "ee470604afb32cb4"),
]
WORLD1_STREAM = "a6c7613d30f22e80"  # captions and objects of seeds 0-199 in all three splits


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("seed, split, caption, pixels, mask", WORLD1)
def test_world_1_scenes_pixels_and_captions_are_unchanged(seed, split, caption, pixels, mask):
    scene = make_scene(seed, split)
    assert (scene.caption, _sha(render(scene)), _sha(masks(scene))) == (caption, pixels, mask)


def test_world_1_scene_stream_is_unchanged():
    digest = hashlib.sha256()
    for seed in range(200):
        for split in ("train", "test", "heldout"):
            s = make_scene(seed, split)
            digest.update(s.caption.encode()), digest.update(repr(s.objects).encode())
    assert digest.hexdigest()[:16] == WORLD1_STREAM


def test_world_2_is_its_own_deterministic_stream():
    a, b = make_scene(7, world=2), make_scene(7, world=2)
    assert a == b and np.array_equal(render(a), render(b))
    assert a.world == 2 and make_scene(7).world == 1
    assert make_scene(7, world=2).caption != make_scene(7).caption


def test_bad_world_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"world=3 is not one of \(1, 2\)"):
        make_scene(0, world=3)
    with pytest.raises(ValueError, match=r"world=0 is not one of \(1, 2\)"):
        parse(np.zeros((8, 8, 3), np.uint8), world=0)


def test_at_least_eight_backgrounds_of_every_kind_occur_and_are_named_in_the_caption():
    scenes = [make_scene(seed, world=2) for seed in range(400)]
    for s in scenes:
        assert s.caption.endswith(f" on a {s.background} background") and s.background == s.backdrop.name
    kinds = {s.backdrop.kind for s in scenes}
    assert kinds == set(backgrounds.KINDS)
    assert len({s.background for s in scenes}) >= 30
    assert {"navy and white striped", "dark green", "teal and white gradient", "brown and beige cloudy"} <= set(
        backgrounds.NAMES)


def test_object_colours_keep_their_distance_from_every_background_pixel():
    """On 1,000 scenes: every colour the painted background uses is at least MIN_DISTANCE from each object's."""
    for seed in range(1000):
        scene = make_scene(seed, world=2)
        painted = backgrounds.paint(scene.backdrop).reshape(-1, 3)  # (pixels, 3)
        for obj in scene.objects:
            d = np.linalg.norm(painted - np.array(COLOURS[obj.colour], np.float32), axis=1).min()
            assert d >= backgrounds.MIN_DISTANCE, (seed, obj.colour, scene.background, d)


def _shown(scene) -> np.ndarray:
    """(n_objects,) share of each object's area that shows."""
    alone = [visible_coverage(dataclasses.replace(scene, objects=(o,), drawn=(0,)))[0] for o in scene.objects]
    return visible_coverage(scene).sum((1, 2)) / np.array([a.sum() for a in alone])


def _touching(scene) -> bool:
    return any(np.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius for i, a in enumerate(scene.objects)
               for b in scene.objects[i + 1:])


@functools.cache
def _occluded(n: int) -> list:
    scenes = (make_scene(seed, world=2, n_objects=3) for seed in range(1000))
    return [s for s in scenes if _touching(s) and (_shown(s) < 0.999).any()][:n]


def test_masks_are_the_visible_pixels_and_pixels_are_exact_under_occlusion():
    scenes = _occluded(30)
    assert len(scenes) == 30
    for scene in scenes:
        vis, ms, image = visible_coverage(scene), masks(scene), render(scene).astype(np.float32)
        assert not (ms.sum(0) > 1).any()
        expected = backgrounds.paint(scene.backdrop) * (1 - vis.sum(0))[..., None]
        expected += np.einsum("nhw,nc->hwc", vis, np.array([COLOURS[o.colour] for o in scene.objects], np.float32))
        assert np.abs(image - expected).max() <= 0.5
        for obj, v, m in zip(scene.objects, vis, ms):
            assert (m <= (v >= 0.5)).all() and ((v > 0.5) <= m).all()  # half or more shows it (ties: the front)
            assert (image[v == 1.0] == COLOURS[obj.colour]).all()
            assert ndimage.label(m)[1] == 1  # in one piece


def test_occlusion_happens_and_every_object_keeps_most_of_itself():
    hidden = 0
    for seed in range(200):
        scene = make_scene(seed, world=2, n_objects=3)
        if _touching(scene):
            share = _shown(scene)
            assert (share >= MIN_VISIBLE - 1e-6).all()
            hidden += (share < 0.999).any()
    assert hidden >= 10, f"only {hidden} of 200 three-object scenes have any occlusion"


def test_a_keypoint_is_hidden_exactly_when_a_later_object_covers_its_neighbourhood():
    seen_hidden = 0
    for scene in _occluded(30):
        vis, visible = visible_coverage(scene), keypoints_visible(scene)
        for rank, i in enumerate(scene.drawn):
            later = sum((vis[j] > 0 for j in scene.drawn[rank + 1:]), np.zeros(vis.shape[1:], bool))
            for name, (x, y) in scene.objects[i].keypoints.items():
                covered = later[max(int(y) - 1, 0):int(y) + 2, max(int(x) - 1, 0):int(x) + 2].any()
                assert visible[i][name] == (not covered)
                seen_hidden += covered
    assert seen_hidden > 0


def test_train_split_never_shows_held_out_compositions_in_world_2():
    for seed in range(300):
        s = make_scene(seed, "train", world=2)
        assert not any((o.colour, o.shape) in HELDOUT_PAIRS for o in s.objects)
        assert s.relation not in HELDOUT_RELATIONS
        h = make_scene(seed, "heldout", world=2)
        assert any((o.colour, o.shape) in HELDOUT_PAIRS for o in h.objects) or h.relation in HELDOUT_RELATIONS


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_parser_reads_at_least_99_percent_of_rendered_world_2_scenes(split):
    scenes = [make_scene(seed, split, world=2) for seed in range(200)]
    right = sum(score(s, parse(render(s), world=2))["all"] for s in scenes)
    assert right >= 0.99 * len(scenes)


def test_parser_reads_every_background_name():
    rng = np.random.default_rng(0)
    for name in backgrounds.NAMES:
        for _ in range(3):
            bg = backgrounds.sample(rng)
            while bg.name != name:
                bg = backgrounds.sample(rng)
            assert backgrounds.read(np.round(backgrounds.paint(bg)).astype(np.uint8)).name == name


def test_parser_reads_blurred_and_noisy_world_2_scenes():
    scenes = [make_scene(seed, "test", world=2) for seed in range(100)]
    rng = np.random.default_rng(0)
    for sigma, noise in ((1.25, 0.0), (1.0, 10.0)):
        right = 0
        for s in scenes:
            soft = ndimage.gaussian_filter(render(s).astype(np.float32), (sigma, sigma, 0))
            image = np.clip(np.round(soft + rng.normal(0, noise, soft.shape)), 0, 255).astype(np.uint8)
            right += score(s, parse(image, world=2))["all"]
        assert right >= 0.98 * len(scenes), (sigma, noise, right)
