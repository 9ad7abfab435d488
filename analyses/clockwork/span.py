"""Feature reuse on a diffusion transformer: a span of consecutive blocks is skipped on chosen steps, and what it
added to the residual stream at the last step it ran is added again (Delta-DiT, FORA, TeaCache, First Block Cache).

    from analyses.clockwork import every, middle_blocks, reuse
    middle_blocks(pipe)             # SD3-medium (24 blocks): transformer_blocks.6 ... transformer_blocks.17
    with reuse(pipe, middle_blocks(pipe), every(2, 10)) as stats:    # reuse() dispatches a DiT here
        pipe(caption, num_inference_steps=10)   # the span runs on even steps; on odd ones it adds its last residual
    stats["transformer_blocks.6"].ran, stats["transformer_blocks.6"].reused          # (5, 5)

middle_blocks(pipe)          the default span: the middle half of the blocks in forward order (a quarter at each end
                             runs every step; of 3 blocks the middle one, of 2 or 1 all)
check_span(pipe, blocks)     refuses blocks that are not one run of consecutive block points, naming them
Span(blocks, reuse, stats)   one span's state; .swaps() {block: fn(run, ctx)}, .pre_hook notes the first's inputs

Why the residual and not the output: a DiT block's output is the residual stream, input + what the block adds. A
UNet block's output is a fresh feature map at its resolution, so DeepCache reuses it as it is; a DiT block's old
output would also put back the old input, undoing what the blocks before it did this step. So on a reused step the
span's output is its input this step plus (output - input) of the last step the span ran, for both streams: the
image tokens and the text tokens (the blocks after the span read both; SD3's last block returns no text, and then
neither does the span). The span's first block computes that sum; the others hand it on unchanged (a lab.hooks swap
each, so none of them runs: a test counts the calls). The inputs come from a forward pre-hook on the first block.
With the span of every block but the first and a step list of all steps but 0 this is diffusers' First Block Cache
with a threshold it never reaches (a test compares the two).

FLUX.1: the double-stream ``transformer_blocks.i`` and the single-stream ``single_transformer_blocks.i`` are one
forward order; a span may cross from one kind to the other, since in diffusers 0.42 both take (hidden_states,
encoder_hidden_states) and return (text, image) (the single-stream block concatenates the streams inside). A span
whose last block returns anything else (an older diffusers' single-stream block) is refused when it first runs.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from lab.hooks import select


def middle_blocks(pipe) -> list[str]:
    """The middle half of a DiT's block points, forward order: ``blocks[q : n - q]``, q = n // 4 (1 when n is 3)."""
    blocks = select(pipe, kind="block")
    n = len(blocks)
    q = max(n // 4, 1 if n >= 3 else 0)
    return blocks[q:n - q]


def check_span(pipe, blocks: Sequence[str]) -> None:
    """ValueError unless `blocks` are DiT block points, consecutive in forward order."""
    valid = select(pipe, kind="block")
    bad = [b for b in blocks if b not in valid]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a block of this transformer; blocks: {', '.join(valid)}")
    at = [valid.index(b) for b in blocks]
    if at != list(range(at[0], at[0] + len(at))):
        raise ValueError(f"blocks {', '.join(blocks)}: on a diffusion transformer the reused blocks are one span of "
                         f"consecutive blocks in forward order (their residual is reused), e.g. "
                         f"{', '.join(middle_blocks(pipe))}")


def _streams(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) a DiT block was called with: SD3's and FLUX.1's blocks take hidden_states (the image tokens)
    first, encoder_hidden_states (the text tokens) second."""
    image = args[0] if args else kwargs["hidden_states"]  # (B, image tokens, c)
    text = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]  # (B, text tokens, c)
    return text, image


class Span:
    """One span's state: the inputs of this call, the residual of the last run, this step's reused output.
    stats[block] are analyses.clockwork.reuse.Reused: each block counts its runs and reuses and times its runs."""

    def __init__(self, blocks: Sequence[str], reuse: Iterable[int], stats: dict):
        self.blocks, self.reuse, self.stats = list(blocks), {int(s) for s in reuse}, stats
        self.input = None  # (text, image) the first block got at this call
        self.residual = None  # (text or None, image): the span's output - its input, at the last step it ran
        self.out = None  # this call's (text, image) on a reused step, else None

    def pre_hook(self, module, args, kwargs) -> None:
        """A forward pre-hook (with_kwargs) for the span's first block: note what the span gets."""
        self.input = _streams(args, kwargs)

    def swaps(self) -> dict:
        """{block: fn(run, ctx)} for trace(swaps=...)."""
        return {b: self._swap(b, i == 0, i == len(self.blocks) - 1) for i, b in enumerate(self.blocks)}

    def _swap(self, name: str, first: bool, last: bool):
        stat = self.stats[name]

        def swap(run, ctx):
            if first:
                self.out = None
                if ctx.step in self.reuse and self.residual is not None:
                    (text, image), (d_text, d_image) = self.input, self.residual
                    self.out = (None if d_text is None else text + d_text, image + d_image)  # (B, tokens, c) each
            if self.out is not None:
                stat.reused += 1
                return self.out  # the same for every block of the span: the ones after the first hand it on
            out = stat.timed(run)
            if last:
                self.residual = self._residual(name, out)
            return out

        return swap

    def _residual(self, name: str, out) -> tuple:
        ok = isinstance(out, tuple) and len(out) == 2 and torch.is_tensor(out[1]) and out[1].ndim == 3 and (
            out[0] is None or (torch.is_tensor(out[0]) and out[0].ndim == 3))
        if not ok:
            raise TypeError(f"{name!r} returned {type(out).__name__}, not the (text, image) token streams a span's "
                            "residual is reused from; reuse a span of blocks that return both (diffusers 0.42's SD3 "
                            "and FLUX.1 blocks do)")
        text, image = self.input
        return (None if out[0] is None else out[0] - text, out[1] - image)  # (B, tokens, c) each

    def clear(self) -> None:
        self.input = self.residual = self.out = None
