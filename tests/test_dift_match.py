"""Matching and PCK on hand-made feature maps and points, and the exactness of the chunked upsampling."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analyses.dift.features import FeatureMap
from analyses.dift.match import Pair, evaluate_pairs, match, pck, sample, similarity, summarize, threshold


def _fmap(tensor, image_size=None):
    tensor = torch.as_tensor(tensor, dtype=torch.float32)
    return FeatureMap(tensor, image_size or tuple(tensor.shape[1:]), image_size or tuple(tensor.shape[1:]))


def test_pck_counts_points_within_alpha_of_the_larger_bbox_side():
    bbox = (10, 20, 60, 40)  # w 50, h 20 -> threshold 5 at alpha 0.1
    assert threshold(bbox, 0.1) == pytest.approx(5.0)
    pred = [[0, 0], [3, 4], [10, 0], [0, 5.01]]
    target = [[0, 0], [0, 0], [0, 0], [0, 0]]
    assert pck(pred, target, bbox, 0.1).tolist() == [True, True, False, False]  # distance 5 counts
    assert pck(pred, target, bbox, 0.2).tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="empty"):
        pck(pred, target, (5, 5, 5, 9))
    with pytest.raises(ValueError, match="3 predictions for 4 targets"):
        pck(pred[:3], target, bbox)


def test_pck_per_image_averages_pairs_and_per_point_pools_them():
    s = summarize([np.array([True, False]), np.array([True, True, True, False]), np.array([], bool)])
    assert s == {"per_image": pytest.approx((0.5 + 0.75) / 2), "per_point": pytest.approx(4 / 6), "pairs": 2,
                 "points": 6}
    assert np.isnan(summarize([])["per_point"])


def test_mutual_nearest_neighbours_on_hand_made_maps():
    # one row of three cells; image size = map size, so upsampling is the identity
    a = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32).T[:, None, :]  # (C=3, 1, 3)
    b = torch.tensor([[1, 0, 0], [1, 0.1, 0], [0, 0, 1]], dtype=torch.float32).T[:, None, :]
    m = match(_fmap(a), _fmap(b), [(0, 0), (1, 0), (2, 0)], mutual=True, tolerance=0.5)
    assert m.points.tolist() == [[0, 0], [1, 0], [2, 0]]
    assert m.back.tolist() == [[0, 0], [0, 0], [2, 0]]  # b's middle cell is nearest a's first
    assert m.mutual.tolist() == [True, False, True]
    assert m.score == pytest.approx([1.0, 0.1 / np.hypot(1, 0.1), 1.0], abs=1e-6)
    assert match(_fmap(a), _fmap(b), [(1, 0)]).mutual is None


def test_similarity_equals_upsampling_then_cosine_for_odd_sizes():
    torch.manual_seed(0)
    fa, fb = _fmap(torch.randn(5, 3, 4), (13, 18)), _fmap(torch.randn(5, 4, 3), (17, 11))
    pts = np.array([[0, 0], [17, 12], [5, 7], [3.4, 9.6]])
    up_a = F.interpolate(fa.tensor[None], size=(13, 18), mode="bilinear", align_corners=False)[0]  # (C, H, W)
    up_b = F.normalize(F.interpolate(fb.tensor[None], size=(17, 11), mode="bilinear", align_corners=False)[0], dim=0)
    for x, y in pts[:3].astype(int):
        torch.testing.assert_close(sample(fa, [(x, y)])[0], up_a[:, y, x], atol=1e-5, rtol=1e-5)
    q = F.normalize(sample(fa, pts), dim=-1)  # (P, C)
    ref = torch.einsum("pc,chw->phw", q, up_b)
    sim = similarity(fa, pts, fb, chunk_bytes=100)  # a few rows per chunk
    torch.testing.assert_close(sim, ref, atol=1e-5, rtol=1e-5)
    m = match(fa, fb, pts, chunk_bytes=100)
    flat = ref.flatten(1).argmax(1)
    assert m.points.tolist() == torch.stack([flat % 11, flat // 11], 1).float().tolist()


def test_points_map_through_a_non_square_odd_sized_image():
    h, w, H, W = 4, 6, 45, 71  # feature cells hold the image coordinates of their centres
    xs = (torch.arange(w) + 0.5) * W / w - 0.5
    ys = (torch.arange(h) + 0.5) * H / h - 0.5
    ramp = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)])  # (2, h, w)
    pts = np.array([[10.0, 8.0], [33.3, 20.7], [60.0, 37.0]])  # between the outermost cell centres
    torch.testing.assert_close(sample(_fmap(ramp, (H, W)), pts), torch.tensor(pts, dtype=torch.float32))
    with pytest.raises(ValueError, match="points must lie in the image"):
        sample(_fmap(ramp, (H, W)), [(71, 3)])


def test_match_refuses_maps_of_different_widths():
    with pytest.raises(ValueError, match="A has 3, B has 4"):
        match(_fmap(torch.ones(3, 2, 2)), _fmap(torch.ones(4, 2, 2)), [(0, 0)])


def test_evaluate_pairs_featurises_each_image_once_per_category():
    a = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32).T[:, None, :]
    maps = {"a": _fmap(a), "b": _fmap(a.flip(-1))}  # b is a mirrored
    calls = []

    def features(ids, images, category):
        calls.append((category, ids))
        return [maps[i] for i in ids]

    pairs = [Pair("p0", "x", None, None, "a", "b", np.array([[0, 0], [1, 0]]), np.array([[2, 0], [0, 0]]),
                  (0, 0, 5, 1), {}),
             Pair("p1", "y", None, None, "a", "a", np.array([[2, 0]]), np.array([[2, 0]]), (0, 0, 5, 1), {}),
             Pair("p2", "x", None, None, "b", "a", np.array([[0, 0]]), np.array([[2, 0]]), (0, 0, 5, 1), {})]
    r = evaluate_pairs(pairs, features)
    assert calls == [("x", ["a", "b"]), ("y", ["a"])]
    assert [rec["name"] for rec in r["pairs"]] == ["p0", "p1", "p2"]  # records keep the order of the pairs
    assert [rec["correct"].tolist() for rec in r["pairs"]] == [[True, False], [True], [True]]
    assert r["all"]["per_point"] == pytest.approx(3 / 4) and r["all"]["per_image"] == pytest.approx(5 / 6)
    assert r["categories"]["x"]["points"] == 3 and r["categories"]["y"]["per_point"] == 1.0
    assert evaluate_pairs(pairs, maps)["all"] == r["all"]  # a mapping works as well as a function
