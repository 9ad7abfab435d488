"""analyses.daam.report: the cross-validated layer choice never scores a layer on the images it was chosen on."""
import pytest

from analyses.daam.report import cross_validated, cross_validated_difference


def rows_where(best_on_even: str, best_on_odd: str, n_images: int = 8) -> list[dict]:
    rows = []
    for image in range(n_images):
        best = best_on_even if image % 2 == 0 else best_on_odd
        for layer in ("A", "B"):
            rows.append({"image": image, "obj": 0, "metric": "layer_iou", "key": layer,
                         "value": 0.9 if layer == best else 0.1})
        rows.append({"image": image, "obj": 0, "metric": "noun_iou", "key": "gaussian prior", "tau": 0.4,
                     "value": 0.2})
    return rows


def test_a_layer_that_is_best_everywhere_is_chosen_and_scored():
    scored, chosen = cross_validated(rows_where("A", "A"))
    assert chosen == {0: "A", 1: "A"} and set(scored.values()) == {0.9}


def test_choosing_on_the_other_half_exposes_a_layer_that_only_fits_its_own_half():
    rows = rows_where("A", "B")  # A wins on even images, B on odd: each fold picks the layer that loses on it
    scored, chosen = cross_validated(rows)
    assert chosen == {0: "B", 1: "A"} and set(scored.values()) == {0.1}
    (diff, lo, hi), _, own, baseline = cross_validated_difference(rows, 0.4, baseline="gaussian prior")
    assert baseline == "gaussian prior" and diff == pytest.approx(-0.1) and own[0] == pytest.approx(0.1)
