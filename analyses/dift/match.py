"""Correspondence from feature maps: nearest neighbours under cosine similarity, and PCK.

    m = match(fa, fb, [(40, 52), (80, 30)])            # fa, fb: FeatureMaps; points (x, y) in image A's pixels
    m.points                                           # (P, 2) best match (x, y) in image B's pixels
    correct = pck(m.points, target, bbox_b, alpha=0.1) # (P,) bool: within 0.1 * max(bbox h, w) of the target

sample(fmap, points) -> (P, C)                 features at points, as if the map were upsampled to the image
similarity(fa, points_a, fb) -> (P, Hb, Wb)    cosine maps over image B (chunked; memory P * Hb * Wb floats)
match(fa, fb, points_a, mutual=False)          argmax of the cosine map; with mutual, a back-match B -> A as well
pck(pred, target, bbox, alpha) -> (P,) bool    PCK@alpha per point
summarize(correct_per_pair) -> dict            per image (mean over pairs) and per point (pooled)

DIFT's recipe: upsample both feature maps bilinearly to their image size, L2-normalise every pixel's vector, take
the argmax of the cosine similarity. The upsampling is done exactly (separable bilinear weights, as
F.interpolate(mode="bilinear", align_corners=False)) but never for the whole image at once: image B is processed in
row chunks of about `chunk_bytes`, and image A only at the query points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_BYTES = 64 * 2**20


def _taps(coords: torch.Tensor, n_in: int, n_out: int):
    """The two input indices and the weight of the second for output pixel coordinates `coords` when resizing
    n_in -> n_out as F.interpolate(mode="bilinear", align_corners=False) does (pixel centres at integers)."""
    src = ((coords.double() + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)  # (P,)
    lo = src.floor().long().clamp(max=n_in - 1)
    return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).float()


def bilinear_weights(coords: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """(len(coords), n_in): the interpolation weights of each output coordinate (fractional ones allowed)."""
    lo, hi, frac = _taps(coords, n_in, n_out)
    w = torch.zeros(len(coords), n_in, device=coords.device)
    w.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
    w.scatter_add_(1, hi[:, None], frac[:, None])
    return w


def _points(points, image_size) -> torch.Tensor:
    if torch.is_tensor(points):
        points = points.detach().cpu()  # e.g. matches found on the GPU
    p = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, 2).float()  # (P, 2) x, y
    h, w = image_size
    if len(p) and (p[:, 0].min() < -0.5 or p[:, 1].min() < -0.5 or p[:, 0].max() > w - 0.5
                   or p[:, 1].max() > h - 0.5):
        raise ValueError(f"points must lie in the image (x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}]); "
                         f"got x in [{p[:, 0].min():.1f}, {p[:, 0].max():.1f}], "
                         f"y in [{p[:, 1].min():.1f}, {p[:, 1].max():.1f}]")
    return p


def sample(fmap, points) -> torch.Tensor:
    """(P, C) features of `fmap` at `points` (x, y) in its image's pixels: the values the bilinearly upsampled map
    has there."""
    t = fmap.tensor.float()  # (C, h, w)
    p = _points(points, fmap.image_size).to(t.device)
    wy = bilinear_weights(p[:, 1], t.shape[1], fmap.image_size[0])  # (P, h)
    wx = bilinear_weights(p[:, 0], t.shape[2], fmap.image_size[1])  # (P, w)
    return torch.einsum("ph,chw,pw->pc", wy, t, wx)  # (P, C)


def _rows(fmap, chunk_bytes: int):
    """Yield (r0, (rows, W, C) L2-normalised upsampled features) over the image of `fmap`, in row chunks."""
    t = fmap.tensor.float()  # (C, h, w)
    c, h, w = t.shape
    H, W = fmap.image_size
    lo, hi, f = _taps(torch.arange(W, device=t.device), w, W)
    tx = (t[:, :, lo] * (1 - f) + t[:, :, hi] * f).permute(1, 2, 0)  # (h, W, C): columns upsampled once
    step = max(1, chunk_bytes // (4 * W * c))
    for r0 in range(0, H, step):
        lo, hi, f = _taps(torch.arange(r0, min(H, r0 + step), device=t.device), h, H)
        rows = tx[lo] * (1 - f)[:, None, None] + tx[hi] * f[:, None, None]  # (rows, W, C)
        yield r0, F.normalize(rows, dim=-1)


def similarity(fa, points_a, fb, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """(P, Hb, Wb) cosine similarity between A's features at `points_a` and every pixel of image B."""
    q = F.normalize(sample(fa, points_a), dim=-1)  # (P, C)
    return torch.cat([torch.einsum("pc,rwc->prw", q, rows) for _, rows in _rows(fb, chunk_bytes)], dim=1)


def _argmax(q: torch.Tensor, fb, chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best pixel (x, y) of image B for each normalised query row of q (P, C), and its cosine."""
    W = fb.image_size[1]
    best = torch.full((len(q),), -2.0, device=q.device)
    where = torch.zeros(len(q), dtype=torch.long, device=q.device)
    for r0, rows in _rows(fb, chunk_bytes):
        s = torch.einsum("pc,rwc->prw", q, rows).flatten(1)  # (P, rows*W)
        val, idx = s.max(dim=1)
        better = val > best  # ties keep the first pixel in raster order
        best, where = torch.where(better, val, best), torch.where(better, idx + r0 * W, where)
    return torch.stack([where % W, where // W], dim=1).float(), best  # (P, 2) x, y; (P,)


@dataclass
class Matches:
    """points (P, 2): best (x, y) in B; score (P,): its cosine; with mutual=True, back (P, 2): the best match in A
    of each of those points, and mutual (P,) bool: back lies within `tolerance` pixels of the query."""

    points: np.ndarray
    score: np.ndarray
    back: np.ndarray | None = None
    mutual: np.ndarray | None = None


def match(fa, fb, points_a, mutual: bool = False, tolerance: float | None = None,
          chunk_bytes: int = CHUNK_BYTES) -> Matches:
    """Nearest neighbour in image B of each point of image A (cosine similarity of upsampled, normalised features).

        m = match(fa, fb, kps_a, mutual=True)
        m.points[m.mutual]                          # only the matches that A's side agrees with

    tolerance: for mutual, how far (pixels of A) the back-match may land from the query; default one feature cell
    of A (image size / map size, the larger axis).
    """
    pa = _points(points_a, fa.image_size)
    q = F.normalize(sample(fa, pa), dim=-1)  # (P, C)
    if q.shape[1] != fb.tensor.shape[0]:
        raise ValueError(f"feature maps differ in channels: A has {q.shape[1]}, B has {fb.tensor.shape[0]}")
    pts, score = _argmax(q, fb, chunk_bytes)
    out = Matches(pts.cpu().numpy(), score.cpu().numpy())
    if mutual:
        if tolerance is None:
            tolerance = max(fa.image_size[0] / fa.tensor.shape[1], fa.image_size[1] / fa.tensor.shape[2])
        qb = F.normalize(sample(fb, pts), dim=-1)
        back, _ = _argmax(qb, fa, chunk_bytes)
        out.back = back.cpu().numpy()
        out.mutual = np.linalg.norm(out.back - pa.numpy(), axis=1) <= tolerance
    return out


def threshold(bbox: Sequence[float], alpha: float = 0.1) -> float:
    """alpha * max(height, width) of bbox (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {tuple(bbox)} is empty; use (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    return alpha * max(y1 - y0, x1 - x0)


def pck(pred, target, bbox: Sequence[float], alpha: float = 0.1) -> np.ndarray:
    """(P,) bool: is each predicted (x, y) within alpha * max(bbox h, w) of its target (distance <= threshold)?"""
    pred, target = np.asarray(pred, float).reshape(-1, 2), np.asarray(target, float).reshape(-1, 2)
    if pred.shape != target.shape:
        raise ValueError(f"{len(pred)} predictions for {len(target)} targets")
    return np.linalg.norm(pred - target, axis=1) <= threshold(bbox, alpha)


def summarize(correct: Sequence[np.ndarray]) -> dict:
    """PCK over pairs: {"per_image": mean over pairs of each pair's fraction, "per_point": all points pooled,
    "pairs": n, "points": n}. Pairs without points are left out of both."""
    kept = [np.asarray(c, bool) for c in correct if len(c)]
    if not kept:
        return {"per_image": float("nan"), "per_point": float("nan"), "pairs": 0, "points": 0}
    pooled = np.concatenate(kept)
    return {"per_image": float(np.mean([c.mean() for c in kept])), "per_point": float(pooled.mean()),
            "pairs": len(kept), "points": int(pooled.size)}


# --- pairs of annotated images --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """Two images of one category with corresponding keypoints: src_kps[i] in src is trg_kps[i] in trg.

    src / trg: the images (path, array, PIL); src_id / trg_id: keys for their features (an image is featurised
    once however many pairs use it); kps: (P, 2) (x, y) pixels; trg_bbox: (x0, y0, x1, y1) for the PCK threshold;
    info: anything else (SPair's flags, the study's subsets, keypoint names).
    """

    name: str
    category: str
    src: object
    trg: object
    src_id: str
    trg_id: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    trg_bbox: tuple
    info: dict


def evaluate_pairs(pairs: Sequence[Pair], features, alpha: float = 0.1, mutual: bool = False) -> dict:
    """Match every pair's src keypoints into trg and score PCK@alpha.

        result = evaluate_pairs(pairs, lambda ids, images, category: featurize(pipe, images))
        result["all"]["per_point"], result["categories"]["cat"]["per_image"], result["pairs"][0]["correct"]

    features: a mapping {image id: FeatureMap} or a function (ids, images, category) -> FeatureMaps, called once
    per category with that category's distinct images (so memory holds one category's maps at a time).
    Returns plain data: "pairs" (one record per pair, in the order given: name, category, pred, target, correct,
    score, mutual, info),
    "all" and "categories" (summarize() of the records).
    """
    records: list = [None] * len(pairs)  # in the order of `pairs`
    for category in dict.fromkeys(p.category for p in pairs):
        group = [(i, p) for i, p in enumerate(pairs) if p.category == category]
        images = {}
        for _, p in group:
            images.setdefault(p.src_id, p.src), images.setdefault(p.trg_id, p.trg)
        if callable(features):
            fmaps = dict(zip(images, features(list(images), list(images.values()), category)))
        else:
            fmaps = features
        for i, p in group:
            m = match(fmaps[p.src_id], fmaps[p.trg_id], p.src_kps, mutual=mutual)
            records[i] = {"name": p.name, "category": category, "pred": m.points, "target": np.asarray(p.trg_kps),
                          "correct": pck(m.points, p.trg_kps, p.trg_bbox, alpha), "score": m.score,
                          "mutual": m.mutual, "info": p.info}
    cats = {c: summarize([r["correct"] for r in records if r["category"] == c])
            for c in dict.fromkeys(r["category"] for r in records)}
    return {"pairs": records, "all": summarize([r["correct"] for r in records]), "categories": cats,
            "alpha": alpha}
