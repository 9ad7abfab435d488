"""Write this folder: a tiny dataset in SPair-71k's file layout, drawn from the shapes world (exact keypoints).

    python tests/data/spair_fixture/make_fixture.py        # rewrites JPEGImages/, ImageAnnotation/, PairAnnotation/

Four single-object images (two arrows pointing opposite ways, two squares), cropped to non-square sizes, and pairs
in the test and trn splits. Keypoints are the world's named keypoints, rounded to integer pixels as SPair stores them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from lab.world import KEYPOINTS, Obj, Scene, render  # noqa: E402

# name: (object, background, crop (x0, y0, x1, y1) of the 128 px rendering)
IMAGES = {
    "arrow": {
        "arrow_0001": (Obj("arrow", "red", "large", 60, 56, 22.0, "right"), "white", (0, 8, 128, 120)),
        "arrow_0002": (Obj("arrow", "blue", "small", 50, 70, 13.0, "left"), "black", (10, 0, 114, 128)),
    },
    "square": {
        "square_0001": (Obj("square", "green", "large", 64, 50, 22.0), "grey", (4, 0, 124, 100)),
        "square_0002": (Obj("square", "yellow", "small", 40, 80, 13.0), "black", (0, 20, 90, 128)),
    },
}
PAIRS = {"test": [("arrow_0001", "arrow_0002"), ("arrow_0002", "arrow_0001"), ("square_0001", "square_0002")],
         "trn": [("square_0002", "square_0001")]}


def annotate(obj: Obj, crop) -> tuple[dict, list[int]]:
    x0, y0 = crop[0], crop[1]
    named = [obj.keypoints[k] for k in KEYPOINTS[obj.shape]]
    kps = {str(i): [round(x - x0), round(y - y0)] for i, (x, y) in enumerate(named)}
    bx0, by0, bx1, by1 = obj.bbox
    return kps, [bx0 - x0, by0 - y0, bx1 - x0, by1 - y0]


def main() -> None:
    ann = {}
    for cat, images in IMAGES.items():
        (HERE / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        (HERE / "ImageAnnotation" / cat).mkdir(parents=True, exist_ok=True)
        for name, (obj, bg, crop) in images.items():
            pixels = render(Scene((obj,), bg))[crop[1]:crop[3], crop[0]:crop[2]]  # (h, w, 3) uint8
            Image.fromarray(np.ascontiguousarray(pixels)).save(HERE / "JPEGImages" / cat / f"{name}.jpg", quality=70)
            kps, bbox = annotate(obj, crop)
            ann[name] = dict(filename=f"{name}.jpg", src_database="shapes world", annotation="make_fixture.py",
                             image_width=crop[2] - crop[0], image_height=crop[3] - crop[1], image_depth=3,
                             category=cat, pose="Unspecified", truncated=0, occluded=0, difficult=0, bndbox=bbox,
                             kps=kps, direction=obj.direction)
            (HERE / "ImageAnnotation" / cat / f"{name}.json").write_text(json.dumps(ann[name]))
    n = 0
    for split, pairs in PAIRS.items():
        folder = HERE / "PairAnnotation" / split
        folder.mkdir(parents=True, exist_ok=True)
        for src, trg in pairs:
            n += 1
            s, t = ann[src], ann[trg]
            ids = [k for k in s["kps"] if s["kps"][k] is not None and t["kps"][k] is not None]
            pair = dict(pair_id=n, src_imname=s["filename"], trg_imname=t["filename"],
                        src_imsize=[s["image_width"], s["image_height"], 3],
                        trg_imsize=[t["image_width"], t["image_height"], 3], src_bndbox=s["bndbox"],
                        trg_bndbox=t["bndbox"], category=s["category"], src_pose="Unspecified",
                        trg_pose="Unspecified", src_trunc=0, trg_trunc=0, src_occl=0, trg_occl=0,
                        src_kps=[s["kps"][k] for k in ids], trg_kps=[t["kps"][k] for k in ids], kps_ids=ids,
                        viewpoint_variation=0, scale_variation=int(s["image_width"] != t["image_width"]),
                        truncation=0, occlusion=0, mirror=int(s["direction"] != t["direction"]))
            (folder / f"{n:06d}-{src}-{trg}:{s['category']}.json").write_text(json.dumps(pair))


if __name__ == "__main__":
    main()
