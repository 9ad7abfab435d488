"""The study's numbers: summaries of score rows (mean and 95% CI, resampling images) and the REPORT section.

    summary(rows, "noun_iou", key="daam", tau=0.4)     # (mean, low, high, n objects)
    section(rows, info)                                # Markdown
"""
from __future__ import annotations

import math

import numpy as np

from .evaluate import TAUS
from .faithfulness import CONDITIONS
from lab.world.quality import wilson

from .metrics import bootstrap, fmt, mean_ci

BASELINES = ("random unet", "gaussian prior", "whole image")
GOAL = 0.15


def select_rows(rows, metric, key=None, tau=None) -> list[dict]:
    return [r for r in rows if r["metric"] == metric and (key is None or r["key"] == key)
            and (tau is None or r.get("tau") == tau)]


def summary(rows, metric, key=None, tau=None) -> tuple[float, float, float, int]:
    """(mean, low, high, count) of the matching rows; the CI resamples images."""
    sel = select_rows(rows, metric, key, tau)
    m, lo, hi = mean_ci([r["value"] for r in sel], [r["image"] for r in sel])
    return m, lo, hi, len(sel)


def keys(rows, metric) -> list[str]:
    """The keys of `metric`, in first-seen order."""
    return list(dict.fromkeys(r["key"] for r in rows if r["metric"] == metric))


def difference(rows, tau, a="daam", b="gaussian prior") -> tuple[float, float, float]:
    """Mean of (a - b) over the objects scored by both, with a 95% CI resampling images."""
    pa = {(r["image"], r["obj"]): r["value"] for r in select_rows(rows, "noun_iou", a, tau)}
    pb = {(r["image"], r["obj"]): r["value"] for r in select_rows(rows, "noun_iou", b, tau)}
    both = sorted(set(pa) & set(pb))
    if not both:
        return float("nan"), float("nan"), float("nan")
    d = [pa[k] - pb[k] for k in both]
    boots = bootstrap(d, [k[0] for k in both])
    return float(np.mean(d)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def cross_validated(rows, metric: str = "layer_iou") -> tuple[dict, dict[int, str]]:
    """Choose the best `metric` slice (a layer, say) on one half of the images and score it on the other (2-fold,
    images split by parity), so the choice is never scored on the images it was chosen on.

    Returns ({(image, obj): IoU of the slice chosen without that image}, {fold: slice chosen for it}).
    """
    scored, chosen = {}, {}
    for fold in (0, 1):
        train = [r for r in select_rows(rows, metric) if r["image"] % 2 != fold]
        keys = dict.fromkeys(r["key"] for r in train)
        means = {k: np.mean([r["value"] for r in train if r["key"] == k]) for k in keys}
        if not means:
            continue
        chosen[fold] = max(means, key=means.get)
        scored.update({(r["image"], r["obj"]): r["value"] for r in select_rows(rows, metric, chosen[fold])
                       if r["image"] % 2 == fold})
    return scored, chosen


def cross_validated_difference(rows, tau: float = 0.4, metric: str = "layer_iou", baseline: str | None = None):
    """(mean, low, high) of the cross-validated slice minus `baseline` (default: the best at tau), the chosen slices,
    and the cross-validated mIoU (mean, low, high). Slices are scored at tau 0.4, so compare at tau 0.4."""
    scored, chosen = cross_validated(rows, metric)
    baseline = baseline or best_baseline(rows, tau)
    pb = {(r["image"], r["obj"]): r["value"] for r in select_rows(rows, "noun_iou", baseline, tau)}
    both = sorted(set(scored) & set(pb))
    if not both:
        return (float("nan"),) * 3, chosen, (float("nan"),) * 3, baseline
    d = [scored[k] - pb[k] for k in both]
    boots = bootstrap(d, [k[0] for k in both])
    own = mean_ci([scored[k] for k in both], [k[0] for k in both])
    interval = (float(np.mean(d)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    return interval, chosen, own, baseline


def best_baseline(rows, tau) -> str:
    means = {b: summary(rows, "noun_iou", b, tau)[0] for b in BASELINES}
    means = {b: m for b, m in means.items() if not math.isnan(m)}
    return max(means, key=means.get) if means else BASELINES[1]


def reading(rows) -> str:
    """A few sentences read off the numbers (generated, so they stay true when the model changes)."""
    out = []
    sanity = difference(rows, 0.4, "daam", "random unet")
    if not math.isnan(sanity[0]):
        verdict = "above" if sanity[1] > 0 else ("below" if sanity[2] < 0 else "not distinguishable from")
        out.append(f"Sanity check: at tau 0.4 DAAM is {verdict} the random-UNet maps ({fmt(*sanity)} mIoU), so the "
                   f"maps {'do' if sanity[1] > 0 else 'may not'} depend on what the UNet learned.")
    for metric, label in (("layer_iou", "layer"), ("steps_iou", "step range")):
        stats = {k: summary(rows, metric, k) for k in keys(rows, metric)}
        stats = {k: v for k, v in stats.items() if not math.isnan(v[0])}
        if stats:
            best = max(stats, key=lambda k: stats[k][0])
            out.append(f"Best single {label}: {best} ({fmt(*stats[best][:3])}; the published method: "
                       f"{fmt(*summary(rows, 'noun_iou', 'daam', 0.4)[:3])}).")
    lost = {c: select_rows(rows, "faith_lost", c) for c in ("inside", "outside", "shifted")}
    if all(lost.values()):
        rate = {c: sum(r["value"] for r in v) / len(v) for c, v in lost.items()}
        out.append(f"Faithfulness: silencing the noun inside its map loses the object in {rate['inside']:.0%} of "
                   f"cases, outside it {rate['outside']:.0%}, in a same-area region elsewhere {rate['shifted']:.0%}; "
                   f"a faithful map would make 'inside' the largest.")
    return " ".join(out)


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def section(rows, info: dict) -> str:
    """The REPORT section of the study, every number from `rows`."""
    n_images = info["n"]
    drawn = summary(rows, "drawn", "objects")
    parts = [
        "## DAAM: which pixels each word attends to",
        "",
        f"Built-in model `{info['model']}`, LAB_SIZE `{info['size']}`: {n_images} held-out captions ("
        f"{'shapes world' if info.get('world', 1) == 1 else 'shapes world 2'}, "
        f"\"test\" split, seeds 2,000,000 + i), {info['steps']} DDIM steps, guidance {info['guidance']}. "
        f"The world's parser segments each generated image; an object is scored only if it was drawn as captioned "
        f"(parsed colour and shape match): {info['targets']} objects "
        f"(objects drawn as captioned per image: {fmt(*drawn[:3], digits=2)}). Maps: the published method (every "
        "down- and up-block cross-attention layer and head, conditional branch, summed over all steps, bicubic "
        "upsampling, clamp, mean; a noun's map is its tokens' mean for that object's occurrence, min-max "
        "normalised at 128x128). 95% CIs are bootstrap intervals resampling images.",
        "",
        "![examples](daam_examples.png)",
        "",
        "### Noun mIoU against the parser's masks",
        "",
    ]
    lines = []
    for method in ("daam", "daam, relative") + BASELINES:
        lines.append([method] + [fmt(*summary(rows, "noun_iou", method, tau)[:3]) for tau in TAUS])
    parts.append(_table(["map", *[f"tau = {t}" for t in TAUS]], lines))
    verdict = []
    for tau in TAUS:
        best = best_baseline(rows, tau)
        d = difference(rows, tau, "daam", best)
        if math.isnan(d[0]):
            met = "n/a"
        elif d[1] >= GOAL:  # d = (estimate, low, high)
            met = "met"
        else:  # at 200 captions the interval is about +-0.03 wide: say when only the estimate clears the goal
            met = "met by the estimate, not by the interval" if d[0] >= GOAL else "NOT met"
        verdict.append([str(tau), best, fmt(*d), f">= {GOAL}: {met}"])
    parts += ["", "`daam, relative` is not the published method: each word's map is divided by the sum of all prompt "
              "tokens' maps before normalising (the reference code's `normalize=True`; "
              "`word_map(..., relative=True)`), which cancels what every word's map shares.", "",
              "The published method (`daam`) minus the best baseline (paired over the same objects):", "",
              _table(["tau", "best baseline", "difference [95% CI]", "goal"], verdict), ""]
    cv, chosen, own, against = cross_validated_difference(rows, 0.4)
    if chosen:
        parts += [f"Not the published method, and not what the goal is judged on: one cross-attention layer alone, "
                  f"chosen on half of the images and scored on the other half (2-fold, by image parity; chosen: "
                  f"{', '.join(sorted(set(chosen.values())))}) reaches {fmt(*own)} mIoU at tau 0.4, "
                  f"{fmt(*cv)} against the {against}.", ""]
    parts += [
              "The random-UNet baseline (a sanity check in the spirit of Adebayo et al., 2018) re-initialises the UNet "
              "from its config with seed 0 and generates from the same seeds; its images are noise, so **its maps are "
              "scored against the masks of the real model's image for the same prompt and seed**. The whole-image "
              "baseline's mask is every pixel; the Gaussian prior is centred with sigma = 1/4 of the side.", "",
              "![mIoU](daam_miou.png)", ""]
    parts += [reading(rows), ""]
    ov = [[k, fmt(*summary(rows, "open_vocab_iou", k)[:3])] for k in keys(rows, "open_vocab_iou")]
    if ov:
        parts += ["Open-vocabulary maps (the kept queries scored against the keys of a new text, tau 0.4): the noun "
                  "from the text 'a <noun>' alone, and a shape the caption does not name ('a <absent shape>') as a "
                  "control:", "", _table(["text", "mIoU with the object's mask"], ov), ""]
    parts += ["### Slices: layer, resolution, step range, head (tau 0.4)", "",
              "![slices](daam_slices.png)", ""]
    slice_lines = []
    for metric, label in (("layer_iou", "layer"), ("resolution_iou", "resolution"), ("steps_iou", "steps"),
                          ("head_iou", "head")):
        for k in keys(rows, metric):
            slice_lines.append([label, k, fmt(*summary(rows, metric, k)[:3])])
    parts += [_table(["slice", "which", "mIoU"], slice_lines), ""]
    ts = info.get("timesteps") or []
    if ts:
        shown = list(enumerate(ts))[::max(1, len(ts) // 5)]
        parts += [f"Step i runs at timestep {', '.join(f'{i}: {int(t)}' for i, t in shown)} "
                  "(step 0 is the noisiest).", ""]
    parts += ["### Adjectives and binding; relation and background words", "",
              "For each object drawn as captioned in an image where the parser matched at least one other captioned "
              "object (drawn as captioned or not): the IoU of the object's colour, size and shape words' masks with "
              "its own mask and with the best-overlapping other object's, and how often the word's mean heat (raw "
              "map, not normalised) is higher inside its own object than inside the others (binding).", ""]
    bind = []
    for k in keys(rows, "bind_iou_own"):
        c = select_rows(rows, "bind_correct", k)
        hits = int(sum(r["value"] for r in c))
        lo, hi = wilson(hits, len(c))
        bind.append([k, fmt(*summary(rows, "bind_iou_own", k)[:3]), fmt(*summary(rows, "bind_iou_other", k)[:3]),
                     f"{hits}/{len(c)} = {hits / max(len(c), 1):.2f} [{lo:.2f}, {hi:.2f}]"])
    parts += [_table(["word", "IoU own object", "IoU other object", "binding correct"], bind) if bind
              else "_No object qualified._", ""]
    area = summary(rows, "area_objects", "area")
    mass = [[k, fmt(*summary(rows, "mass_in_objects", k)[:3])] for k in keys(rows, "mass_in_objects")]
    parts += [f"Share of each word's heat (raw map) inside the objects, i.e. the union of every object the parser "
              f"found (every image with at least one); the objects cover {fmt(*area[:3])} of the image, the share a "
              "map blind to them would have. Relation is the whole phrase ('to the left of', 'above'):", "",
              _table(["word", "heat inside objects"], mass) if mass else "_No image qualified._", "",
              "![words](daam_words.png)", ""]
    faith = []
    for c in CONDITIONS:
        lost = select_rows(rows, "faith_lost", c)
        k = int(sum(r["value"] for r in lost))
        lo, hi = wilson(k, len(lost))
        faith.append([c, f"{k}/{len(lost)} = {k / max(len(lost), 1):.2f} [{lo:.2f}, {hi:.2f}]",
                      fmt(*summary(rows, "faith_change", c)[:3]), fmt(*summary(rows, "faith_area", c)[:3], digits=2)])
    parts += ["### Faithfulness: silence the noun inside vs outside its map", "",
              f"For {info['faith_targets']} objects: the noun's cross-attention (its tokens, conditional branch, every "
              "cross-attention layer, every step) is set to 0 inside the binarised map (tau 0.4), outside it, inside "
              "the same mask shifted by half the image (same area, elsewhere), or everywhere; the image is generated "
              "again from the same seed. Lost: the parser finds fewer objects of that colour and shape than before. "
              "Change: mean absolute pixel change over the object's original mask.", "",
              _table(["silenced", "object lost", "pixel change in object", "region area"], faith), "",
              "![faithfulness](daam_faithfulness.png)", "",
              "![layer x steps](daam_layer_steps.png)", "",
              f"Time: {', '.join(f'{k} {v:.0f} s' for k, v in info['seconds'].items())}; total {info['total']:.0f} s."]
    return "\n".join(parts) + "\n"
