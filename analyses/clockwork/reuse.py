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
reuse(pipe, blocks, steps)       context manager: each block is swapped for a Reused wrapper during the with-block
                                 and put back after it (also after an error); yields {block: Reused}

Why a swapped-in module and not a hook: a forward hook that replaces a block's output still runs the block, and a
forward pre-hook cannot return an output, so neither saves any time. The wrapper's forward either calls the block
(and keeps its output: for a down block the (hidden states, skips) tuple) or returns what it kept, and it times
the calls that run (Reused.seconds, CPU time of this process), so the study can report both the measured saving and
the block's share of the UNet's time. Every other attribute is the block's own (the UNet reads `resnets`,
`has_cross_attention` from it). Steps are the wrapper's calls, one per UNet call: one `with reuse(...)` block
holds one pipeline call. A reused output is the same tensor, batch for batch, so the guidance layout and the batch
must not change between steps (they do not within a pipeline call).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

from torch import nn

from lab.hooks import select
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


class Reused(nn.Module):
    """A block that runs on the steps not in `reuse` and returns its last output on those in it."""

    def __init__(self, block: nn.Module, reuse: Iterable[int]):
        super().__init__()
        self.block = block
        self.reuse = {int(s) for s in reuse}
        self.step, self.kept, self.ran, self.reused, self.seconds = -1, None, 0, 0, 0.0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, *args, **kwargs):
        self.step += 1
        if self.step in self.reuse and self.kept is not None:
            self.reused += 1
            return self.kept
        t0 = time.process_time()
        self.kept = self.block(*args, **kwargs)  # hidden (B, c, h, w), or (hidden, skips) for a down block
        self.seconds += time.process_time() - t0
        self.ran += 1
        return self.kept


def _parent_and_key(unet, name: str):
    if name == "mid_block":
        return unet, "mid_block"
    group, index = name.split(".")
    return getattr(unet, group), int(index)


@contextlib.contextmanager
def reuse(pipe, blocks: Sequence[str], steps: Iterable[int]):
    """Swap each of `blocks` (block point names) for a Reused wrapper reusing on `steps`; put them back on exit."""
    require_unet(pipe)
    unet = pipe.unet
    valid = select(pipe, kind="block")
    bad = [b for b in blocks if b not in valid]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a block of this UNet; blocks: {', '.join(valid)}")
    steps = list(steps)
    swapped, stats = [], {}
    try:
        for name in blocks:
            parent, key = _parent_and_key(unet, name)
            block = parent[key] if isinstance(key, int) else getattr(parent, key)
            wrapper = Reused(block, steps)
            if isinstance(key, int):
                parent[key] = wrapper
            else:
                setattr(parent, key, wrapper)
            swapped.append((parent, key, block))
            stats[name] = wrapper
        yield stats
    finally:
        for wrapper in stats.values():
            wrapper.kept = None  # the last outputs: the stats stay readable, the tensors go
        for parent, key, block in reversed(swapped):
            if isinstance(key, int):
                parent[key] = block
            else:
                setattr(parent, key, block)
