"""What a DAAM capture keeps: the options of ``capture`` / ``generate`` and the traces (views) they make.

    opts = Options(slices=True, tokens="prompt", dtype=torch.float16, head_steps=[12])
    views(layers, opts, token_positions=range(18))   # [View('cache', ...), View('slices', ...), View('heads', ...)]
    opts.changed(dtype=torch.float32).kwargs()         # "slices=True, tokens='prompt', head_steps=[12]" (pasteable)

One run, several caches, each a lab.hooks trace on the same layers (traces nest on one attention layer):
  cache    the published method: steps summed, every head (a DiT: heads averaged), cond branch (always)
  slices   every step, both branches, heads averaged (slices=True): what the explorer slices by step and branch
  heads    every head, both branches, at `head_steps` (default every step) of `head_layers` (default every layer)
  queries  each layer's ``to_q`` output at `query_steps`, cond branch (queries=True): open-vocabulary maps
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch

from lab.hooks import Keep

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BOTH = ("cond", "uncond")


@dataclass(frozen=True)
class Options:
    """The capture options beside the layers; see the module docstring for what each view keeps.

        Options(slices=True, tokens="prompt")

    query_steps / head_steps: "all" or step indices (negative ones count from the end); head_layers: full names
    or globs of the captured layers; tokens: None (every key), "prompt" (the prompt's positions, start to end
    token) or key positions, for the slices and heads views; dtype: storage of the every-step views (slices, heads,
    queries): torch.float32, float16 or bfloat16. The published view is always a float32 sum.
    """

    slices: bool = False
    queries: bool = False
    query_steps: str | Sequence[int] = "all"
    head_layers: str | Sequence[str] | None = None
    head_steps: str | Sequence[int] | None = None
    tokens: str | Sequence[int] | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        for field in ("query_steps", "head_steps"):
            value = getattr(self, field)
            if value is None or value == "all":
                continue
            if isinstance(value, str) or not list(value):
                raise ValueError(f"{field}={value!r}; give 'all' or a list of step indices")
            object.__setattr__(self, field, tuple(int(s) for s in value))
        if isinstance(self.head_layers, str) and self.head_layers != "all":
            object.__setattr__(self, "head_layers", (self.head_layers,))
        elif self.head_layers is not None and self.head_layers != "all":
            object.__setattr__(self, "head_layers", tuple(self.head_layers))
        if isinstance(self.tokens, str) and self.tokens != "prompt":
            raise ValueError(f"tokens={self.tokens!r}; give None (every key), 'prompt' or a list of key positions")
        if self.tokens is not None and not isinstance(self.tokens, str):
            object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; storage dtypes: {', '.join(map(str, DTYPES))}")

    @property
    def heads(self) -> bool:
        """Whether a per-head view is kept (head_layers or head_steps given)."""
        return self.head_layers is not None or self.head_steps is not None

    def changed(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> str:
        """The options that differ from the defaults, as keyword arguments to paste into capture() / generate()."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                parts.append(f"{f.name}={list(v) if isinstance(v, tuple) else v!r}")
        return ", ".join(parts)


@dataclass(frozen=True)
class View:
    """One trace of a capture: its role ('cache' | 'slices' | 'heads' | 'queries'), its points and its Keep."""

    role: str
    names: tuple[str, ...]
    keep: Keep


def published_keep(dit: bool = False) -> Keep:
    """The published method's Keep: steps summed in place, every head, cond branch; on a diffusion transformer heads
    averaged (one token grid, nothing upsampled: the mean is exact, see dit.py)."""
    return Keep(steps="sum", heads="mean" if dit else "all", branches=("cond",))


def views(layers: Sequence[str], opts: Options, token_positions: Sequence[int] | None = None,
          keep: Keep | None = None) -> list[View]:
    """The traces a capture of `layers` with `opts` makes, outermost first.

    token_positions: the key positions kept by the slices and heads views (opts.tokens resolved; None = every
    key). keep: another Keep for the 'cache' view instead of the published one.
    """
    layers = tuple(layers)
    tokens = None if token_positions is None else tuple(int(t) for t in token_positions)
    out = [View("cache", layers, keep or published_keep())]
    if opts.slices:
        out.append(View("slices", layers, Keep(steps="all", heads="mean", branches=BOTH, tokens=tokens,
                                               dtype=opts.dtype)))
    if opts.heads:
        steps = "all" if opts.head_steps in (None, "all") else opts.head_steps
        out.append(View("heads", head_layer_names(layers, opts.head_layers),
                        Keep(steps=steps, heads="all", branches=BOTH, tokens=tokens, dtype=opts.dtype)))
    if opts.queries:
        out.append(View("queries", tuple(f"{n}.to_q" for n in layers),
                        Keep(steps=opts.query_steps, branches=("cond",), dtype=opts.dtype)))
    return out


def head_layer_names(layers: Sequence[str], head_layers) -> tuple[str, ...]:
    """The captured layers whose every head is kept: all of them (None / 'all'), or those matching the globs."""
    if head_layers in (None, "all"):
        return tuple(layers)
    chosen = tuple(n for n in layers if any(fnmatch.fnmatchcase(n, g) for g in head_layers))
    if not chosen:
        raise ValueError(f"head_layers={list(head_layers)!r} matches none of the captured layers: "
                         f"{', '.join(layers)}")
    return chosen


def prompt_positions(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Key positions from the start token to the last end token of the longest prompt: tokens='prompt'."""
    longest = max(len(tokenizer(p, truncation=True, max_length=tokenizer.model_max_length).input_ids)
                  for p in prompts)
    return list(range(longest))
