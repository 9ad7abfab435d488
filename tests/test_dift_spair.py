"""The SPair-71k reader and evaluator on tests/data/spair_fixture: SPair's file layout, shapes-world images."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analyses.dift.spair import evaluate, image_annotation, load_pairs, table
from tiny_models import one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent / "data" / "spair_fixture"


def _fixture_source():
    spec = importlib.util.spec_from_file_location("make_fixture", ROOT / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pairs_load_with_the_world_keypoints_in_each_cropped_image():
    pairs = load_pairs(ROOT, "test")
    assert [p.name for p in pairs] == ["000001-arrow_0001-arrow_0002:arrow", "000002-arrow_0002-arrow_0001:arrow",
                                       "000003-square_0001-square_0002:square"]
    src = {name: spec for cat in _fixture_source().IMAGES.values() for name, spec in cat.items()}
    for p in pairs:
        for path, kps in ((p.src, p.src_kps), (p.trg, p.trg_kps)):
            obj, _, crop = src[Path(path).stem]
            truth = np.array(list(obj.keypoints.values())) - crop[:2]
            np.testing.assert_allclose(kps, truth, atol=0.5)  # SPair stores integer pixels
            with Image.open(path) as im:
                assert im.size == (crop[2] - crop[0], crop[3] - crop[1])  # (w, h): non-square
        x0, y0, x1, y1 = p.trg_bbox
        assert (p.trg_kps[:, 0] >= x0 - 1).all() and (p.trg_kps[:, 0] <= x1).all() and y1 > y0
    assert [p.info["mirror"] for p in pairs] == [1, 1, 0]
    assert pairs[0].src_id == "arrow/arrow_0001.jpg" and pairs[0].info["kps_ids"] == ["0", "1", "2", "3", "4"]


def test_split_category_and_limit_select_pairs():
    assert [p.category for p in load_pairs(ROOT, "trn")] == ["square"]
    assert [p.name[:6] for p in load_pairs(ROOT, "test", categories="square")] == ["000003"]
    assert len(load_pairs(ROOT, "test", limit=2)) == 2
    assert image_annotation(ROOT, "arrow", "arrow_0002.jpg")["image_width"] == 104


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an SPair-71k folder"):
        load_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no split 'val'.*splits there: test, trn"):
        load_pairs(ROOT, "val")
    with pytest.raises(ValueError, match=r"unknown categories \['cat'\]; categories: arrow, square"):
        load_pairs(ROOT, categories=["cat"])


def test_evaluate_scores_every_pair_with_the_built_in_model(shapes_pipe):
    r = evaluate(shapes_pipe, ROOT, ensemble=2, mutual=True)
    recs = r["pairs"]
    assert len(recs) == 3 and r["all"]["pairs"] == 3 and r["all"]["points"] == 5 + 5 + 5
    pooled = np.concatenate([rec["correct"] for rec in recs])
    assert r["all"]["per_point"] == pytest.approx(pooled.mean())
    assert set(r["categories"]) == {"arrow", "square"}
    for rec, p in zip(recs, load_pairs(ROOT)):
        with Image.open(p.trg) as im:
            w, h = im.size
        assert ((rec["pred"] >= 0) & (rec["pred"] < [w, h])).all()  # in the target image's own pixels
        assert rec["mutual"].dtype == bool and rec["correct"].shape == (5,)
    assert r["setting"]["prompt"] == "a photo of a {category}" and "| **all** | 3 | 15 |" in table(r)
