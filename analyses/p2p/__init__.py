"""Prompt-to-prompt editing (Hertz et al., 2022) on lab.hooks: edit a generated image by editing its prompt, keeping
the source run's attention maps.

    from analyses import p2p
    out = p2p.generate(pipe, [p2p.Request("a small red circle on a white background",
                                          "a small green circle on a white background", blend=("circle",))],
                       [p2p.Control(cross_steps=0.8, self_steps=0.4, blend=True)], steps=25, seed=0, plain=True)
    out.images["source"], out.images["edit 0"], out.images["plain"]     # (1, 128, 128, 3) uint8 each

align / seen / token_positions      align.py: target keys -> source keys for 'swap', 'refine', 'reweight'
Request / Control / generate        control.py: the edits (cross- and self-attention injection, re-weighting,
                                    local blending), source and edits in one batch from one seed
tasks / verdict                     score.py: colour and shape swaps of the shapes world, judged by its parser
side_by_side / Editor               plot.py, widgets.py: figures and the notebook's controls
python -m analyses.p2p [out]        study.py: edited-and-preserved rate against the uncontrolled baseline
"""
from .align import METHODS, Alignment, align, seen, token_positions
from .control import Control, Edited, Request, generate

__all__ = ["METHODS", "Alignment", "Control", "Edited", "Request", "align", "generate", "seen", "token_positions"]
