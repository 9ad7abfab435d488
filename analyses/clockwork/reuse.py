"""Feature reuse (Clockwork Diffusion, DeepCache): on chosen steps a block is not run; its output from the last step
it ran is used instead, so its compute is really skipped.

    >>> import lab
    >>> from analyses.clockwork.reuse import low_resolution_blocks, reuse
    >>> pipe = lab.load("shapes")
    >>> low_resolution_blocks(pipe)
    ['down_blocks.2', 'mid_block', 'up_blocks.0']
    >>> with reuse(pipe, ["mid_block"], steps=[1, 3, 5]) as stats:
    ...     image = pipe("a small red circle on a white background", num_inference_steps=6).images[0]
    >>> stats["mid_block"].reused, stats["mid_block"].ran
    (3, 3)

low_resolution_blocks(pipe)      the blocks that run at the UNet's lowest resolution: the last down block, the mid
                                 block, the first up block
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
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

from lab.hooks import select, trace
from lab.pipes import unet_only


def require_unet(pipe) -> None:
    """Refuse an SD3 / Flux pipeline by name (lab.pipes.unet_only): what every clockwork function runs on."""
    unet_only(pipe, "layer sensitivity and feature reuse", "they perturb and skip a UNet's down / mid / up blocks, "
              "whose resolutions differ; a transformer's blocks all work on one token grid, so it has no "
              "low-resolution blocks to reuse, and the per-block study is not written for it yet")


def low_resolution_blocks(pipe) -> list[str]:
    """The last down block, the mid block and the first up block: the blocks that compute at the lowest resolution."""
    require_unet(pipe)
    unet = pipe.unet
    return [f"down_blocks.{len(unet.down_blocks) - 1}", "mid_block", "up_blocks.0"]


def every(k: int, steps: int) -> list[int]:
    """Steps that reuse when the block runs only every k-th step: all but 0, k, 2k, ... (k=1: none)."""
    if k < 1:
        raise ValueError(f"every k={k}: k counts steps, 1 or more")
    return [s for s in range(steps) if s % k]


class Reused:
    """What one block did under reuse(): `ran` and `reused` counts, the CPU `seconds` of its runs; `swap` is its
    lab.hooks swap function, which returns the last output on the steps in `reuse` (once there is one)."""

    def __init__(self, reuse: Iterable[int]):
        self.reuse = {int(s) for s in reuse}
        self.kept, self.ran, self.reused, self.seconds = None, 0, 0, 0.0

    def swap(self, run, ctx):
        if ctx.step in self.reuse and self.kept is not None:
            self.reused += 1
            return self.kept
        t0 = time.process_time()
        self.kept = run()  # hidden (B, c, h, w), or (hidden, skips) for a down block
        self.seconds += time.process_time() - t0
        self.ran += 1
        return self.kept


@contextlib.contextmanager
def reuse(pipe, blocks: Sequence[str], steps: Iterable[int]):
    """Skip each of `blocks` (block point names) on `steps`, reusing its last output; yields {block: Reused}."""
    require_unet(pipe)
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
