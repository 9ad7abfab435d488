"""Layer sensitivity and feature reuse (seed: "Clockwork Diffusion"; DeepCache): how far the image moves when one
block's output gets noise at one step, and what reusing the low-resolution blocks' previous outputs costs. On a
diffusion transformer (SD3 / SD3.5, FLUX.1) the blocks are its transformer blocks (image stream), and reuse skips a
span of its middle blocks, adding the residual the span added at its last run (Delta-DiT, FORA, TeaCache).

    from analyses import clockwork
    out = clockwork.perturbed(pipe, [caption], seeds=[0], steps=10,
                              perturbations=[clockwork.Perturbation("mid_block", 2, 0.5)])   # {'plain' | p: images}
    with clockwork.reuse(pipe, clockwork.reusable_blocks(pipe), clockwork.every(2, 10)) as stats:
        pipe(caption, num_inference_steps=10)      # the low-res blocks (a DiT: the middle blocks) run on even steps
    stats["mid_block"].reused, stats["mid_block"].seconds

Perturbation / noise_edit / perturbed / perturbable   perturb.py: relative noise on a block's output at a step (edit)
reuse / Reused / every / reusable_blocks / group_name reuse.py: blocks skipped on chosen steps (lab.hooks swaps)
low_resolution_blocks                        reuse.py: a UNet's last down, mid and first up block (refused on a DiT)
middle_blocks / Span                         span.py: a DiT's default span, and its residual reuse
moved / reading                              score.py: pixel RMS and the parser's reading against the plain run
sensitivity_map / tradeoff                   plot.py: block x step heat map; quality lost against time saved
Noiser / Reuser                              widgets.py: the notebook's controls
python -m analyses.clockwork [out]           study.py: sensitivity by block and step; reuse's cost and saving
"""
from .perturb import Perturbation, noise_edit, perturbable, perturbed
from .reuse import Reused, every, group_name, low_resolution_blocks, reusable_blocks, reuse
from .score import moved, reading
from .span import middle_blocks

__all__ = ["Perturbation", "Reused", "every", "group_name", "low_resolution_blocks", "middle_blocks", "moved",
           "noise_edit", "perturbable", "perturbed", "reading", "reusable_blocks", "reuse"]
