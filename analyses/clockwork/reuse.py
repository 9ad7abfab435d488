"""Feature reuse (Clockwork Diffusion, DeepCache; on a DiT Delta-DiT, FORA, TeaCache): on chosen steps blocks are not
run and what they computed at the last step they ran is used instead, so their compute is really skipped.

    >>> import lab
    >>> from analyses.clockwork.reuse import low_resolution_blocks, reuse
    >>> pipe = lab.load("shapes")
    >>> low_resolution_blocks(pipe)
    ['down_blocks.2', 'mid_block', 'up_blocks.0']
    >>> with reuse(pipe, ["mid_block"], steps=[1, 3, 5]) as stats:
    ...     image = pipe("a small red circle on a white background", num_inference_steps=6).images[0]
    >>> stats["mid_block"].reused, stats["mid_block"].ran
    (3, 3)

reusable_blocks(pipe)            the default blocks to reuse: a UNet's low-resolution blocks, a DiT's middle blocks
group_name(pipe)                 what those are called in labels: 'low-res blocks' or 'middle blocks'
low_resolution_blocks(pipe)      the blocks that run at the UNet's lowest resolution: the last down block, the mid
                                 block, the first up block (a UNet only: a DiT has one token grid)
every(k, steps)                  the steps that reuse when the block runs every k-th step (steps 0, k, 2k ... run)
reuse(pipe, blocks, steps)       context manager: each block is swapped out on `steps` for the length of the
                                 with-block (a lab.hooks swap point, put back after it, also after an error);
                                 yields {block: Reused}

Why a swap and not an edit: an edit replaces a block's output after the block has run, so it saves no time. A swap
(``trace(pipe, swaps=...)``, lab.hooks.swap) runs in place of the block's forward: Reused.swap either runs the block
(and keeps its output: for a down block the (hidden states, skips) tuple) or returns what it kept, and it times the
calls that run (Reused.seconds, CPU time of this process), so the study can report both the measured saving and the
block's share of the UNet's time. The block stays the UNet's own module. Steps are the trace's (one per UNet call):
one `with reuse(...)` block holds one pipeline call. A reused output is the same tensor, batch for batch, so the
guidance layout and the batch must not change between steps (the trace refuses a call where they do).

On a diffusion transformer (SD3 / SD3.5, FLUX.1) `blocks` is one span of consecutive blocks, and what is reused is
the residual the span added (its output - its input, image and text streams) rather than its output, which carries
the whole residual stream: see analyses.clockwork.span. The counts and timings are the same Reused per block.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

from lab.hooks import select, trace
from lab.hooks.points import denoiser_of
from lab.pipes import family_of, unet_only

from .span import Span, check_span, middle_blocks


def low_resolution_blocks(pipe) -> list[str]:
    """The last down block, the mid block and the first up block: the blocks that compute at the lowest resolution."""
    unet_only(pipe, "low_resolution_blocks", "a transformer's blocks all work on one token grid, so none is "
              "low-resolution; reusable_blocks(pipe) gives a DiT's default instead, its middle blocks, whose residual "
              "reuse() reuses")
    unet = denoiser_of(pipe)
    return [f"down_blocks.{len(unet.down_blocks) - 1}", "mid_block", "up_blocks.0"]


def reusable_blocks(pipe) -> list[str]:
    """The blocks to reuse by default: a UNet's low_resolution_blocks, a DiT's middle_blocks (a span)."""
    return low_resolution_blocks(pipe) if family_of(pipe) == "unet" else middle_blocks(pipe)


def group_name(pipe) -> str:
    """The label of reusable_blocks(pipe) as a group: 'low-res blocks' on a UNet, 'middle blocks' on a DiT."""
    return "low-res blocks" if family_of(pipe) == "unet" else "middle blocks"


def every(k: int, steps: int) -> list[int]:
    """Steps that reuse when the block runs only every k-th step: all but 0, k, 2k, ... (k=1: none)."""
    if k < 1:
        raise ValueError(f"every k={k}: k counts steps, 1 or more")
    return [s for s in range(steps) if s % k]


class Reused:
    """What one block did under reuse(): `ran` and `reused` counts, the CPU `seconds` of its runs; `swap` is its
    lab.hooks swap function on a UNet, which returns the last output on the steps in `reuse` (once there is one)."""

    def __init__(self, reuse: Iterable[int]):
        self.reuse = {int(s) for s in reuse}
        self.kept, self.ran, self.reused, self.seconds = None, 0, 0, 0.0

    def timed(self, run):
        """run() the block, counted and timed; returns its output."""
        t0 = time.process_time()
        out = run()
        self.seconds += time.process_time() - t0
        self.ran += 1
        return out

    def swap(self, run, ctx):
        if ctx.step in self.reuse and self.kept is not None:
            self.reused += 1
            return self.kept
        self.kept = self.timed(run)  # hidden (B, c, h, w), or (hidden, skips) for a down block
        return self.kept


@contextlib.contextmanager
def reuse(pipe, blocks: Sequence[str], steps: Iterable[int]):
    """Skip each of `blocks` (block point names) on `steps`, reusing its last output (on a DiT: `blocks` is one span,
    whose last residual is reused); yields {block: Reused}."""
    if family_of(pipe) != "unet":
        with _reuse_span(pipe, blocks, steps) as stats:
            yield stats
        return
    valid = select(pipe, kind="block")
    bad = [b for b in blocks if b not in valid]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a block of this UNet; blocks: {', '.join(valid)}")
    steps = list(steps)
    stats = {name: Reused(steps) for name in blocks}
    try:
        with trace(pipe, swaps={name: r.swap for name, r in stats.items()}):
            yield stats
    finally:
        for r in stats.values():
            r.kept = None  # the last outputs: the stats stay readable, the tensors go


@contextlib.contextmanager
def _reuse_span(pipe, blocks: Sequence[str], steps: Iterable[int]):
    """reuse() on a DiT: the span `blocks` skipped on `steps`, its last residual added to its input instead."""
    blocks, steps = list(blocks), list(steps)
    if not blocks:
        yield {}
        return
    check_span(pipe, blocks)
    stats = {name: Reused(steps) for name in blocks}
    span = Span(blocks, steps, stats)
    first = dict(denoiser_of(pipe).named_modules())[blocks[0]]
    handle = first.register_forward_pre_hook(span.pre_hook, with_kwargs=True)
    try:
        with trace(pipe, swaps=span.swaps()):
            yield stats
    finally:
        handle.remove()
        span.clear()  # the inputs and residuals: the stats stay readable, the tensors go
