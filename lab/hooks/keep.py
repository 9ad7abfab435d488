"""What a trace keeps, and the running reductions that keep memory bounded by that choice.

    Keep()                                         # every step, every head, every token, both branches
    Keep(steps="sum", heads="mean", branches=("cond",))  # DAAM: one map per layer, summed over steps
    Keep(steps=[0, 10, 24], tokens=[1, 2])         # three steps, two prompt tokens
    Keep(steps="sum", before_edits=True)            # at an edited point, the model's own maps, not the replacement

Memory per captured attention point, in fp32 bytes: 4 * branches * batch * (heads, or 1 for heads="mean")
* queries * (keys, or len(tokens)), times the number of steps for steps="all" (or len(steps) for a list),
once for "sum"/"mean". A block/resnet/transformer point: 4 * branches * batch * channels * h * w, times steps; a
projection point (or a DiT's text stream): 4 * branches * batch * tokens * channels, times steps. For a DiT's joint
attention, queries and keys are those of the view: image->text is (h*w) x text tokens, the whole 'joint' map
(h*w + text)^2.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

STEP_MODES = ("all", "sum", "mean")
HEAD_MODES = ("all", "mean")
BRANCHES = ("cond", "uncond")  # the guidance branches a pipeline's batch has; trace(branches=) may name others
ATTENTION = ("attn1", "attn2", "joint", "image->text", "text->image", "image->image", "text->text")
TEXT_KEYS = ("attn2", "image->text", "text->text")  # attention kinds whose keys are text tokens (Keep.tokens)
TOKEN_ROWS = ("projection", "text_block")  # kinds kept as (token, channel)


@dataclass(frozen=True)
class Keep:
    """What to keep of each captured point; see the module docstring for what each choice costs.

        Keep(steps="mean", heads="mean", tokens=[2], branches=("cond",))

    steps: "all" | "sum" | "mean" | a list of step indices (negative ones count from the end when the pipeline's
    step count is known). heads: "all" | "mean". tokens: key indices kept for cross-attention (attn2), None = all.
    branches: which branches to keep, in this order along the "branch" axis ("cond", "uncond", or labels a trace's
    branches= gives, e.g. "perturbed"); a guidance branch the run does not have (no "uncond" without guidance) is
    left out, any other label the run does not have is refused at its first step. device / dtype: where results
    are stored.
    before_edits: at a point an edit replaces (this trace's or another's), keep what the model computed there, not
    the replacement (the default); prompt-to-prompt's local blend reads an edited row's own maps this way.
    """

    steps: str | Sequence[int] = "all"
    heads: str = "all"
    tokens: Sequence[int] | None = None
    branches: Sequence[str] = BRANCHES
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    before_edits: bool = False

    def __post_init__(self):
        if isinstance(self.steps, str):
            if self.steps not in STEP_MODES:
                raise ValueError(f"Keep.steps={self.steps!r}; valid: {', '.join(map(repr, STEP_MODES))} or a list "
                                 "of step indices")
        else:
            steps = tuple(int(s) for s in self.steps)
            if not steps:
                raise ValueError("Keep.steps=[] keeps nothing; give step indices, 'all', 'sum' or 'mean'")
            object.__setattr__(self, "steps", steps)
        if self.heads not in HEAD_MODES:
            raise ValueError(f"Keep.heads={self.heads!r}; valid: {', '.join(map(repr, HEAD_MODES))}")
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        branches = (self.branches,) if isinstance(self.branches, str) else tuple(self.branches)
        if not branches or not all(isinstance(b, str) and b for b in branches) or len(set(branches)) != len(branches):
            raise ValueError(f"Keep.branches={self.branches!r}: give branch labels, each once: "
                             f"{', '.join(BRANCHES)}, or those a trace's branches= names")
        object.__setattr__(self, "branches", branches)

    def __repr__(self) -> str:
        """Only the fields that differ from the defaults, so it can be pasted: Keep(heads='mean', branches=('cond',))"""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                parts.append(f"{f.name}={list(v) if f.name == 'tokens' else v!r}")
        return f"Keep({', '.join(parts)})"

    @property
    def step_mode(self) -> str:
        """'all', 'sum', 'mean' or 'list'."""
        return self.steps if isinstance(self.steps, str) else "list"


@dataclass
class Store:
    """The kept tensor of one point: a running fp32 sum (steps 'sum'/'mean') or one slot per kept step.

    The running buffers live on `device` (the model's, when it has room: no host transfer per step) and move to
    ``keep.device`` once, in ``result()``.
    """

    keep: Keep
    n_slots: int | None  # slots for 'all'/list; None = 'all' with an unknown step count (grows)
    device: torch.device | str = "cpu"
    buffer: torch.Tensor | None = None
    parts: list = field(default_factory=list)
    count: int = 0

    def add(self, slot: int, x: torch.Tensor) -> None:
        """Fold one step's reduced tensor `x` (branch, batch, ...) into the store, in place."""
        mode = self.keep.step_mode
        if mode in ("sum", "mean"):
            if self.buffer is None:
                self.buffer = torch.zeros(x.shape, dtype=torch.float32, device=self.device)  # running sum
            self._check(x.shape, tuple(self.buffer.shape))
            self.buffer.add_(x.to(self.device, non_blocking=True))
        elif self.n_slots is None:
            if self.parts:
                self._check(x.shape, tuple(self.parts[0].shape))
            self.parts.append(x.to(self.device, self.keep.dtype, non_blocking=True))
        else:
            if self.buffer is None:
                self.buffer = torch.zeros((self.n_slots, *x.shape), dtype=self.keep.dtype, device=self.device)
            self._check(x.shape, tuple(self.buffer.shape[1:]))
            if slot >= self.n_slots:
                raise ValueError(f"step {slot} is past the {self.n_slots} steps this trace was sized for; one trace "
                                 "covers one pipeline call")
            self.buffer[slot].copy_(x, non_blocking=True)
        self.count += 1

    @staticmethod
    def _check(got, want) -> None:
        if tuple(got) != tuple(want):
            raise ValueError(f"this step's tensor has shape {tuple(got)} but earlier steps had {tuple(want)}; one "
                             "trace covers one pipeline call (same batch, size and guidance)")

    def so_far(self) -> torch.Tensor | None:
        """What result() would give if the run ended now, as a copy on the running device (steps kept so far)."""
        mode = self.keep.step_mode
        if mode in ("sum", "mean"):
            if self.buffer is None:
                return None
            out = self.buffer / self.count if mode == "mean" else self.buffer.clone()
        elif self.n_slots is None:
            out = torch.stack(self.parts) if self.parts else None
        else:
            out = None if self.buffer is None else self.buffer[:self.count].clone()  # slots fill in step order
        return None if out is None else out.to(dtype=self.keep.dtype)

    def result(self) -> torch.Tensor | None:
        mode = self.keep.step_mode
        if mode in ("sum", "mean"):
            if self.buffer is None:
                return None
            out = self.buffer / self.count if mode == "mean" else self.buffer
        elif self.n_slots is None:
            out = torch.stack(self.parts) if self.parts else None
        else:
            out = self.buffer
        return None if out is None else out.to(self.keep.device, self.keep.dtype)


def reduce(x: torch.Tensor, kind: str, keep: Keep, have: Sequence[str], kept: Sequence[str],
           heads_averaged: bool = False) -> torch.Tensor:
    """One step's tensor, batch-major (B, ...), to what `keep` keeps: (branch, batch, [head,] query, key) or features.

    x: attention probabilities (B, heads, q, k) (heads = 1 holding their mean when `heads_averaged`), projections
    (B, tokens, c) or features (B, c, h, w), where B = len(have) * batch and `have` names the branches of x's rows in
    order; `kept` are the branches to keep, in the order of the result's branch axis.
    """
    x = x.detach()
    x = x.reshape(len(have), x.shape[0] // len(have), *x.shape[1:])  # (have, batch, ...)
    idx = [list(have).index(b) for b in kept]
    if idx != list(range(len(have))):
        x = x[idx] if len(idx) > 1 else x[idx[0]].unsqueeze(0)  # (branch, batch, ...)
    if kind in ATTENTION:
        if kind in TEXT_KEYS and keep.tokens is not None:
            x = x[..., list(keep.tokens)]  # (branch, batch, heads, q, tokens)
        if heads_averaged:
            if keep.heads != "mean":
                raise ValueError("probabilities averaged over heads cannot be kept per head")
            return x.squeeze(2)  # (branch, batch, q, k)
        if keep.heads == "mean":
            return x.mean(dim=2, dtype=torch.float32)  # (branch, batch, q, k)
    return x  # stores convert to keep.dtype when they copy


def step_shape(kind: str, keep: Keep, n_branches: int, batch: int, heads: int | None, hw: tuple[int, int],
               keys: int | None, channels: int | None, queries: int | None = None) -> tuple[int, ...]:
    """Shape one step of a point adds to the store (no step axis); for a projection or a DiT's text stream `keys` is
    its token count; queries default to h*w."""
    q = hw[0] * hw[1] if queries is None else queries
    if kind in TOKEN_ROWS:
        return (n_branches, batch, keys, channels)
    if kind in ATTENTION:
        k = len(keep.tokens) if (kind in TEXT_KEYS and keep.tokens is not None) else keys
        return (n_branches, batch, q, k) if keep.heads == "mean" else (n_branches, batch, heads, q, k)
    return (n_branches, batch, channels, *hw)


def axes(kind: str, keep: Keep) -> tuple[str, ...]:
    """Named axes of a point's kept tensor: ("step", "branch", "batch", "head", "query", "key") for attention,
    (..., "token", "channel") for projections, (..., "channel", "height", "width") for features."""
    steps = () if keep.step_mode in ("sum", "mean") else ("step",)
    if kind in TOKEN_ROWS:
        return (*steps, "branch", "batch", "token", "channel")
    if kind in ATTENTION:
        return (*steps, "branch", "batch", *(() if keep.heads == "mean" else ("head",)), "query", "key")
    return (*steps, "branch", "batch", "channel", "height", "width")


def nbytes(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
