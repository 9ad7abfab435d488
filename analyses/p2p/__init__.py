"""Prompt-to-prompt editing (Hertz et al., 2022) on lab.hooks: edit a generated image by editing its prompt, keeping
the source run's attention maps.

    from analyses import p2p
    out = p2p.generate(pipe, [p2p.Request("a small red circle on a white background",
                                          "a small green circle on a white background", blend=("circle",))],
                       [p2p.Control(cross_steps=0.8, self_steps=0.4, blend=True)], steps=25, seed=0, plain=True)
    out.images["source"], out.images["edit 0"], out.images["plain"]     # (1, 128, 128, 3) uint8 each

align / seen / token_positions      align.py: target keys -> source keys for 'swap', 'refine', 'reweight'
windows                             align.py: each text encoder's run of keys (UNet: CLIP; SD3: CLIP, T5; Flux: T5)
Request / Control / generate        control.py: the edits (cross- and self-attention injection, re-weighting,
                                    local blending), source and edits in one batch from one seed
tasks / verdict                     score.py: colour and shape swaps of the shapes world, judged by its parser
side_by_side / Editor               plot.py, widgets.py: figures and the notebook's controls
python -m analyses.p2p [out]        study.py: edited-and-preserved rate against the uncontrolled baseline

It runs on UNet pipelines and on SD3 / SD3.5 and FLUX.1: there cross-attention is each joint-attention layer's
image->text view and self-attention its image->image view (control.py says how an injected view keeps rows summing
to one), words are aligned in each text encoder's window (align.py).
"""
from .align import METHODS, Alignment, Window, align, seen, token_positions, windows
from .control import Control, Edited, Request, generate

__all__ = ["METHODS", "Alignment", "Control", "Edited", "Request", "Window", "align", "generate", "seen",
           "token_positions", "windows"]
