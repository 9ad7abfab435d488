"""SPair-71k: read its pairs from disk and evaluate DIFT on them (PCK@alpha per image and per point, per category).

    pairs = load_pairs("/data/SPair-71k", split="test")               # list[Pair]
    result = evaluate(pipe, "/data/SPair-71k", split="test")          # DIFT's published setting for SD 2.1
    result["all"]["per_point"], result["all"]["per_image"], result["categories"]["cat"]

    python -m analyses.dift.spair /data/SPair-71k --model stabilityai/stable-diffusion-2-1 [--limit 100]

The dataset is not shipped (download SPair-71k yourself). The layout read here:
    JPEGImages/<category>/<image>.jpg
    ImageAnnotation/<category>/<image>.json      image_width, image_height, bndbox [x0, y0, x1, y1],
                                                 kps {id: [x, y] or null}
    PairAnnotation/<split>/<pair>.json           split: trn | val | test; pair: "<id>-<src>-<trg>:<category>"
        src_imname, trg_imname, category, src_kps / trg_kps [[x, y], ...] (corresponding rows), kps_ids,
        src_bndbox / trg_bndbox [x0, y0, x1, y1], src_imsize / trg_imsize [w, h, 3], mirror, viewpoint_variation,
        scale_variation, truncation, occlusion
PCK threshold: alpha * max(h, w) of the target bbox, as DIFT evaluates. tests/data/spair_fixture is a tiny dataset in
this format, drawn from the shapes world.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from lab.progress import progress

from .features import DEFAULT_BLOCK, DEFAULT_T, featurize
from .match import Pair, evaluate_pairs

SPLITS = ("trn", "val", "test")
PAIR_FLAGS = ("mirror", "viewpoint_variation", "scale_variation", "truncation", "occlusion")


def _root(root) -> Path:
    root = Path(root).expanduser()
    if not (root / "PairAnnotation").is_dir() or not (root / "JPEGImages").is_dir():
        raise FileNotFoundError(f"{root} is not an SPair-71k folder: it needs PairAnnotation/ and JPEGImages/ "
                                "(download SPair-71k and pass the folder that holds them)")
    return root


def load_pairs(root: str | os.PathLike, split: str = "test", categories=None, limit: int | None = None) -> list[Pair]:
    """The pairs of `split`, sorted by file name; `categories` keeps only those, `limit` the first n (per call).

    Each Pair has the image paths, keypoints (P, 2) float (x, y), trg_bbox and info = the pair's flags, kps_ids,
    src_bbox and the file name. Unknown categories are an error that lists the ones there.
    """
    root = _root(root)
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        have = sorted(p.name for p in (root / "PairAnnotation").iterdir() if p.is_dir())
        raise FileNotFoundError(f"no split {split!r} in {root / 'PairAnnotation'}; splits there: {', '.join(have)}")
    files = sorted(folder.glob("*.json"))
    wanted = None
    if categories is not None:
        wanted = {categories} if isinstance(categories, str) else set(categories)
        have = sorted({f.stem.rsplit(":", 1)[-1] for f in files} | {p.name for p in (root / "JPEGImages").iterdir()})
        bad = sorted(wanted - set(have))
        if bad:
            raise ValueError(f"unknown categories {bad}; categories: {', '.join(have)}")
    pairs = []
    for f in files:
        if limit is not None and len(pairs) >= limit:
            break
        if wanted is not None and ":" in f.stem and f.stem.rsplit(":", 1)[-1] not in wanted:
            continue  # the category is in the file name: skip without reading it
        a = json.loads(f.read_text())
        if wanted is not None and a["category"] not in wanted:
            continue
        pairs.append(_pair(root, f, a))
    return pairs


def _pair(root: Path, f: Path, a: dict) -> Pair:
    cat = a["category"]
    src_kps = np.asarray(a["src_kps"], dtype=np.float64).reshape(-1, 2)  # (P, 2) x, y
    trg_kps = np.asarray(a["trg_kps"], dtype=np.float64).reshape(-1, 2)
    if len(src_kps) != len(trg_kps):
        raise ValueError(f"{f}: {len(src_kps)} src_kps but {len(trg_kps)} trg_kps")
    info = {k: a[k] for k in PAIR_FLAGS if k in a}
    info.update(kps_ids=list(a.get("kps_ids", [])), src_bbox=tuple(a["src_bndbox"]), file=f.name)
    return Pair(name=f.stem, category=cat, src=root / "JPEGImages" / cat / a["src_imname"],
                trg=root / "JPEGImages" / cat / a["trg_imname"], src_id=f"{cat}/{a['src_imname']}",
                trg_id=f"{cat}/{a['trg_imname']}", src_kps=src_kps, trg_kps=trg_kps,
                trg_bbox=tuple(float(v) for v in a["trg_bndbox"]), info=info)


def image_annotation(root: str | os.PathLike, category: str, image: str) -> dict:
    """ImageAnnotation/<category>/<image>.json as a dict (image may be given with or without .jpg)."""
    path = _root(root) / "ImageAnnotation" / category / (Path(image).stem + ".json")
    if not path.is_file():
        raise FileNotFoundError(f"no image annotation {path}")
    return json.loads(path.read_text())


def evaluate(pipe, root: str | os.PathLike, split: str = "test", alpha: float = 0.1, t: int = DEFAULT_T,
             block=DEFAULT_BLOCK, ensemble: int = 8, prompt: str = "a photo of a {category}", size="native",
             categories=None, limit: int | None = None, seed: int = 0, batch_size: int = 8,
             mutual: bool = False) -> dict:
    """PCK@alpha of DIFT features of `pipe` on SPair-71k's `split`; defaults are DIFT's published SD 2.1 setting.

        result = evaluate(pipe, "/data/SPair-71k", limit=200)
        result["all"]            # {"per_image": ..., "per_point": ..., "pairs": 200, "points": ...}

    prompt: a template with {category}, formatted per category. Each image is featurised once per category it
    appears in. Returns evaluate_pairs()'s plain data plus "setting".
    """
    pairs = load_pairs(root, split, categories, limit)
    if not pairs:
        raise ValueError(f"no pairs in {root} split {split!r} for categories={categories!r}")

    bar = progress(total=len({p.category for p in pairs}), desc=f"SPair-71k {split}", unit="category")

    def features(ids, images, category):  # called once per category (evaluate_pairs)
        bar.set_postfix_str(f"{category}: {len(images)} images")
        maps = featurize(pipe, images, t=t, block=block, ensemble=ensemble, prompt=prompt.format(category=category),
                         size=size, seed=seed, batch_size=batch_size)
        bar.update()
        return maps

    result = evaluate_pairs(pairs, features, alpha=alpha, mutual=mutual)
    bar.close()
    result["setting"] = {"split": split, "alpha": alpha, "t": t, "block": block, "ensemble": ensemble,
                         "prompt": prompt, "size": size, "seed": seed}
    return result


def table(result: dict) -> str:
    """Markdown: PCK per category and over all pairs."""
    rows = [("**all**", result["all"])] + sorted(result["categories"].items())
    lines = [f"| category | pairs | points | PCK@{result['alpha']:g} per image | per point |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {s['pairs']} | {s['points']} | {s['per_image']:.3f} | {s['per_point']:.3f} |" for c, s in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    import lab

    ap = argparse.ArgumentParser(description="DIFT on SPair-71k: PCK per category")
    ap.add_argument("root")
    ap.add_argument("--model", default="shapes", help="lab.load name, folder or cached hub id")
    ap.add_argument("--split", default="test", choices=SPLITS)
    ap.add_argument("--t", type=int, default=DEFAULT_T)
    ap.add_argument("--block", default=DEFAULT_BLOCK)
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    pipe = lab.load(args.model)
    result = evaluate(pipe, args.root, args.split, args.alpha, args.t, args.block, args.ensemble, limit=args.limit,
                      batch_size=args.batch_size)
    print(table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
