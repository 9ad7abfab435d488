"""Perturbed-attention guidance (Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance")
on lab.hooks: guide away from the model whose chosen self-attention maps are the identity.

    from analyses import pag
    images = pag.generate(pipe, ["a small red circle on a white background"], seeds=[0], steps=25, guidance=0.0,
                          pag_scale=3.0, layers="mid")            # (1, 128, 128, 3) float in [0, 1]
    pag.layers(pipe, "up")                                       # the attn1 point names PAG would perturb
    pag.layers(sd3_pipe, "mid")                                  # SD3 / Flux: joint-attention layers

generate / layers / identity_attention   guidance.py: the sampling loop, the layer choice and the edit
groups / combine                         guidance.py: the layer groups a pipeline has, the guided prediction
image_identity                           dit.py: SD3 / SD3.5 / FLUX.1, diffusers' SD3 PAG as a joint-attention edit
scenes / verdict                         score.py: one-object captions, the parser's clean-object check
rate_curves / examples                   plot.py: rate by scale and layer choice (Wilson intervals), image grid
Guide                                    widgets.py: the notebook's layer choice and scale sliders
python -m analyses.pag [out]             study.py: clean-object rate by scale and layers, without CFG and beside it
"""
from .dit import image_identity
from .guidance import GROUPS, combine, generate, groups, identity_attention, layers

__all__ = ["GROUPS", "combine", "generate", "groups", "identity_attention", "image_identity", "layers"]
