"""Swap points: a function runs in place of a module's forward for the length of a trace, and decides whether the
module runs at all (feature reuse: Clockwork Diffusion, DeepCache).

    kept = {}
    def reuse_odd_steps(run, ctx):                  # run() runs the block on this call's inputs and returns its output
        if ctx.step % 2 == 0 or "out" not in kept:
            kept["out"] = run()
        return kept["out"]                            # on odd steps the block's compute is skipped
    with trace(pipe, swaps={"mid_block": reuse_odd_steps}):
        pipe("a red circle", num_inference_steps=10)

fn(run, ctx) returns what the module returns (a down block its (hidden states, skips) tuple, a DiT block its
(text, image) streams); ctx is the Context edits get. Neither hook can do this: a forward hook runs after the module
has run, a forward pre-hook cannot return an output. So the swap sets an instance attribute ``forward`` on the module
(the module object, its parameters and its place in the model stay; forward hooks on it, a trace keeping or editing
that point among them, see what fn returned) and puts back what was there on exit. Outside a denoiser call (before
step 0) the module runs as it is.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

SWAPPABLE = ("block", "resnet", "transformer")  # point kinds that are a whole module's output


class Swap:
    """`fn` in place of `module.forward` until ``remove()``; ``ctx_of()`` gives the Context, or None before step 0."""

    def __init__(self, name: str, module: nn.Module, fn: Callable, ctx_of: Callable):
        current = vars(module).get("forward")
        if getattr(current, "lab_swap", None) is not None:
            raise RuntimeError(f"{name!r} is already swapped by an enclosing trace; one swap per module (put both "
                               "in one function)")
        own = module.forward  # the bound forward, or what an accelerate hook set on the instance

        def forward(*args, **kwargs):
            ctx = ctx_of()
            if ctx is None:
                return own(*args, **kwargs)
            return fn(lambda: own(*args, **kwargs), ctx)

        forward.lab_swap = name
        self.module, self.previous, self.forward = module, current, forward
        module.forward = forward

    def remove(self) -> None:
        if vars(self.module).get("forward") is not self.forward:
            return  # already removed
        if self.previous is None:
            del self.module.forward
        else:
            self.module.forward = self.previous
