"""Layer sensitivity: add noise of a given relative size to one block's output at one denoising step, and see how far
the final image moves. The denoiser is a UNet (SD 1.x / 2.x / SDXL, the built-in models) or a diffusion transformer
(SD3 / SD3.5, FLUX.1).

    >>> import lab
    >>> from analyses.clockwork.perturb import Perturbation, perturbed
    >>> pipe = lab.load("shapes")
    >>> out = perturbed(pipe, ["a small red circle on a white background"], seeds=[0], steps=8,
    ...                 perturbations=[Perturbation("mid_block", 3, 0.5)])
    >>> out["plain"].shape, out[Perturbation("mid_block", 3, 0.5)].shape
    ((1, 128, 128, 3), (1, 128, 128, 3))

Perturbation(block, step, r)    noise n with ||n|| = r * ||output|| per image row, added to `block`'s output at `step`
noise_edit(plan, n)             the lab.hooks edit (one per block) that adds it to the rows of each perturbation
perturbed(pipe, prompts, seeds, steps, perturbations, guidance)   {'plain' | Perturbation: (n, H, W, 3) uint8}
perturbable(pipe)               the points a Perturbation may name, forward order

Every perturbation and the plain run are rows of ONE pipeline call (condition-major: rows c*n .. c*n+n-1 are
condition c's images, each from its prompt's seed), so an image moves only by its own perturbation. With guidance
both branches of a row get noise of the same relative size (drawn independently). A down block's point is its
hidden states, not the skip connections it also returns (lab.hooks' block point): the noise reaches the skips
only through the blocks after it.

On a DiT a block point (``transformer_blocks.3``; FLUX.1 also ``single_transformer_blocks.7``) is the block's
image-stream output, (c, h, w) over the token grid: the noise goes on the image tokens only, and the text stream
reaches the next block as the block computed it. Its text stream is perturbed only when asked, by naming its
``:text`` point (``Perturbation("transformer_blocks.3:text", 2, 0.5)``: noise on the (tokens, c) text output; SD3's
last block has none). FLUX.1's single-stream blocks run one sequence inside, but in diffusers 0.42 they take and
return the two streams apart, like the double-stream ones, so both kinds have the same two points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lab.hooks import points, trace


@dataclass(frozen=True)
class Perturbation:
    block: str   # a block point: 'down_blocks.1', 'mid_block', 'up_blocks.0', 'transformer_blocks.3', '...:text'...
    step: int    # the denoising step (0 = the noisiest)
    r: float     # ||noise|| / ||output||, per image row


def noise_edit(plan: Sequence[Perturbation], n: int, seed: int = 0):
    """Edit for a block point: at each step, rows of the perturbations of that block and step get relative noise.
    plan[c] is condition c + 1 (condition 0 is the plain run); n images per condition."""
    def edit(out: torch.Tensor, ctx) -> torch.Tensor | None:  # out: (B, c, h, w); a DiT's text stream (B, tokens, c)
        todo = [(c + 1, p) for c, p in enumerate(plan) if p.block == ctx.point and p.step == ctx.step]
        if not todo:
            return None
        out = out.clone()
        for branch in ctx.branches:
            rows = ctx.rows(branch)
            for cond, p in todo:
                for j in range(n):
                    row = rows.start + cond * n + j
                    gen = torch.Generator().manual_seed(seed + 7919 * cond + j)
                    noise = torch.randn(out.shape[1:], generator=gen).to(out)  # (c, h, w) or (tokens, c)
                    out[row] += noise * (p.r * out[row].norm() / noise.norm())  # ||noise|| = r ||out[row]||
        return out

    return edit


def perturbable(pipe) -> list[str]:
    """The points a Perturbation may name, in forward order: every block point (a UNet's blocks; a DiT's blocks'
    image streams), and on a DiT each block's text stream (``<block>:text``)."""
    return [p.name for p in points(pipe) if p.kind in ("block", "text_block")]


@torch.no_grad()
def perturbed(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int,
              perturbations: Sequence[Perturbation], guidance: float = 7.5, **call_kwargs) -> dict:
    """{'plain': images, perturbation: images}, each (n, H, W, 3) uint8, every image of a prompt from its seed."""
    prompts, seeds, plan = list(prompts), list(seeds), list(perturbations)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
    blocks = perturbable(pipe)
    bad = [p for p in plan if p.block not in blocks or not 0 <= p.step < steps]
    if bad:
        raise ValueError(f"{bad[0]}: the block must be one of {', '.join(blocks)} and the step in 0..{steps - 1}")
    n, conds = len(prompts), 1 + len(plan)
    edits = {b: noise_edit(plan, n) for b in sorted({p.block for p in plan})}
    gens = [torch.Generator(pipe.device).manual_seed(s) for _ in range(conds) for s in seeds]
    with trace(pipe, [], edits=edits):
        out = pipe(prompts * conds, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   output_type="np", **call_kwargs).images  # (conds * n, H, W, 3) float in [0, 1]
    images = (np.asarray(out) * 255).round().astype(np.uint8).reshape(conds, n, *np.shape(out)[1:])
    return {"plain": images[0], **{p: images[c + 1] for c, p in enumerate(plan)}}
