"""DIFT (Tang et al., NeurIPS 2023): dense correspondence from one UNet pass over a noised real image.

    from analyses.dift import featurize, match, pck
    fa, fb = featurize(pipe, ["a.jpg", "b.jpg"], t=261, block="up_blocks.1", ensemble=8, prompt="a photo of a cat")
    m = match(fa, fb, [(120, 80)])                     # m.points: (x, y) in b.jpg; mutual=True adds a back-check
    pck(m.points, [(131, 77)], bbox_b, alpha=0.1)

features   featurize(pipe, images, t, block, ensemble, prompt, size, seed, batch_size) -> list[FeatureMap]
dit        SD3 / Flux for featurize: flow-matching noise, their conditioning, block="transformer_blocks.k"
match      match, similarity, sample, pck, summarize, Pair, evaluate_pairs
spair      load_pairs(root, split), evaluate(pipe, root, ...) on SPair-71k on disk
pairs      world_pairs, one_factor_pairs: the study's items (shapes-world pairs with keypoints)
evaluate   grid, baselines, subsets, by_factor, pck_curve: the study's measurements
figures    report    the study's figures and its REPORT section
study      Config, config(), run(out) (python -m analyses.dift [out])
plots      plot_matches, plot_similarity, plot_grid (take an ax, return it)
explore    the notebook's click-to-match view and its controls (notebooks/dift.ipynb)
"""
from .features import DEFAULT_BLOCK, DEFAULT_T, FeatureMap, featurize, input_size, load_image
from .match import Matches, Pair, evaluate_pairs, match, pck, sample, similarity, summarize

__all__ = ["DEFAULT_BLOCK", "DEFAULT_T", "FeatureMap", "Matches", "Pair", "evaluate_pairs", "featurize",
           "input_size", "load_image", "match", "pck", "sample", "similarity", "summarize"]
