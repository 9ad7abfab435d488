"""Layer sensitivity and feature reuse (seed: "Clockwork Diffusion"; DeepCache): how far the image moves when one
block's output gets noise at one step, and what reusing the low-resolution blocks' previous outputs costs.

    from analyses import clockwork
    out = clockwork.perturbed(pipe, [caption], seeds=[0], steps=10,
                              perturbations=[clockwork.Perturbation("mid_block", 2, 0.5)])   # {'plain' | p: images}
    with clockwork.reuse(pipe, clockwork.low_resolution_blocks(pipe), clockwork.every(2, 10)) as stats:
        pipe(caption, num_inference_steps=10)      # the low-res blocks run on even steps only
    stats["mid_block"].reused, stats["mid_block"].seconds

Perturbation / noise_edit / perturbed        perturb.py: relative noise on a block's output at a step (lab.hooks edit)
reuse / Reused / every / low_resolution_blocks   reuse.py: a block skipped on chosen steps (a lab.hooks swap)
moved / reading                              score.py: pixel RMS and the parser's reading against the plain run
sensitivity_map / tradeoff                   plot.py: block x step heat map; quality lost against time saved
Noiser / Reuser                              widgets.py: the notebook's controls
python -m analyses.clockwork [out]           study.py: sensitivity by block and step; reuse's cost and saving
"""
from .perturb import Perturbation, noise_edit, perturbed
from .reuse import Reused, every, low_resolution_blocks, reuse
from .score import moved, reading

__all__ = ["Perturbation", "Reused", "every", "low_resolution_blocks", "moved", "noise_edit", "perturbed", "reading",
           "reuse"]
