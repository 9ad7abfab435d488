"""The diffusion model as a zero-shot classifier (seed: "Discriminative Diffusion Models as Few-shot Vision and
Language Learners"): rank captions of an image by denoising error over timesteps, or by cross-attention agreement.

    from analyses import classify
    e = classify.errors(pipe, image, [true_caption, swapped_caption], classify.timesteps(10))   # (2, 10)
    classify.rank(e)                                   # [0, 1]: the true caption denoises better

errors / attention / rank / timesteps / encode_image   score.py: the two scores (SD 1.x / 2.x / XL, SD3 / SD3.5, FLUX.1)
conditioning / noisy / velocity   flow.py: the DiT steps (flow matching: velocity error at sigma = t / 1000)
pairs / Pair                       binding.py: the shapes world's attribute-binding test (colours or shapes swapped)
error_curves                       plot.py: each caption's error over t (a given Axes)
python -m analyses.classify [out]  study.py: accuracy by attribute with Wilson intervals, compute per decision
"""
from .binding import ATTRIBUTES, Pair, pairs
from .score import attention, encode_image, errors, rank, timesteps

__all__ = ["ATTRIBUTES", "Pair", "attention", "encode_image", "errors", "pairs", "rank", "timesteps"]
