"""What a trace keeps, and the running reductions that keep memory bounded by that choice.

    Keep()                                         # every step, every head, every token, both branches
    Keep(steps="sum", heads="mean", branches=("cond",))  # DAAM: one map per layer, summed over steps
    Keep(steps=[0, 10, 24], tokens=[1, 2])         # three steps, two prompt tokens

Memory per captured attention point, in fp32 bytes: 4 * branches * batch * (heads, or 1 for heads="mean")
* queries * (keys, or len(tokens)), times the number of steps for steps="all" (or len(steps) for a list),
once for "sum"/"mean". A block/resnet/transformer point: 4 * branches * batch * channels * h * w, times steps; a
projection point: 4 * branches * batch * tokens * channels, times steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

STEP_MODES = ("all", "sum", "mean")
HEAD_MODES = ("all", "mean")
BRANCHES = ("cond", "uncond")
ATTENTION = ("attn1", "attn2")


@dataclass(frozen=True)
class Keep:
    """What to keep of each captured point; see the module docstring for what each choice costs.

        Keep(steps="mean", heads="mean", tokens=[2], branches=("cond",))

    steps: "all" | "sum" | "mean" | a list of step indices (negative ones count from the end when the pipeline's
    step count is known). heads: "all" | "mean". tokens: key indices kept for cross-attention (attn2), None = all.
    branches: which guidance branches to keep, in this order along the "branch" axis ("cond", "uncond"); a branch
    the run does not have (no "uncond" without guidance) is left out. device / dtype: where results are stored.
    """

    steps: str | Sequence[int] = "all"
    heads: str = "all"
    tokens: Sequence[int] | None = None
    branches: Sequence[str] = BRANCHES
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32

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
        bad = [b for b in branches if b not in BRANCHES]
        if bad or not branches:
            raise ValueError(f"Keep.branches={self.branches!r}; valid branches: {', '.join(BRANCHES)}")
        object.__setattr__(self, "branches", branches)

    @property
    def step_mode(self) -> str:
        """'all', 'sum', 'mean' or 'list'."""
        return self.steps if isinstance(self.steps, str) else "list"


@dataclass
class Store:
    """The kept tensor of one point: a running fp32 sum (steps 'sum'/'mean') or one slot per kept step."""

    keep: Keep
    n_slots: int | None  # slots for 'all'/list; None = 'all' with an unknown step count (grows)
    buffer: torch.Tensor | None = None
    parts: list = field(default_factory=list)
    count: int = 0

    def add(self, slot: int, x: torch.Tensor) -> None:
        """Fold one step's reduced tensor `x` (branch, batch, ...) into the store, in place."""
        mode = self.keep.step_mode
        if mode in ("sum", "mean"):
            if self.buffer is None:
                self.buffer = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # running sum, model device
            self._check(x.shape, tuple(self.buffer.shape))
            self.buffer.add_(x)
        elif self.n_slots is None:
            if self.parts:
                self._check(x.shape, tuple(self.parts[0].shape))
            self.parts.append(x.to(self.keep.device, self.keep.dtype))
        else:
            if self.buffer is None:
                self.buffer = torch.zeros((self.n_slots, *x.shape), dtype=self.keep.dtype, device=self.keep.device)
            self._check(x.shape, tuple(self.buffer.shape[1:]))
            if slot >= self.n_slots:
                raise ValueError(f"step {slot} is past the {self.n_slots} steps this trace was sized for; one trace "
                                 "covers one pipeline call")
            self.buffer[slot].copy_(x)
        self.count += 1

    @staticmethod
    def _check(got, want) -> None:
        if tuple(got) != tuple(want):
            raise ValueError(f"this step's tensor has shape {tuple(got)} but earlier steps had {tuple(want)}; one "
                             "trace covers one pipeline call (same batch, size and guidance)")

    def result(self) -> torch.Tensor | None:
        mode = self.keep.step_mode
        if mode in ("sum", "mean"):
            if self.buffer is None:
                return None
            out = self.buffer / self.count if mode == "mean" else self.buffer
            return out.to(self.keep.device, self.keep.dtype)
        if self.n_slots is None:
            return torch.stack(self.parts) if self.parts else None
        return self.buffer


def reduce(x: torch.Tensor, kind: str, keep: Keep, n_layout: int, branch_idx: list[int]) -> torch.Tensor:
    """One step's tensor, batch-major (B, ...), to what `keep` keeps: (branch, batch, [head,] query, key) or features.

    x: attention probabilities (B, heads, q, k), projections (B, tokens, c) or features (B, c, h, w), where
    B = n_layout * batch.
    """
    x = x.detach()
    x = x.reshape(n_layout, x.shape[0] // n_layout, *x.shape[1:])  # (layout, batch, ...)
    if branch_idx != list(range(n_layout)):
        x = x[branch_idx] if len(branch_idx) > 1 else x[branch_idx[0]].unsqueeze(0)  # (branch, batch, ...)
    if kind in ATTENTION:
        if kind == "attn2" and keep.tokens is not None:
            x = x[..., list(keep.tokens)]  # (branch, batch, heads, q, tokens)
        if keep.heads == "mean":
            return x.mean(dim=2, dtype=torch.float32)  # (branch, batch, q, k)
    return x  # stores convert to keep.dtype when they copy


def step_shape(kind: str, keep: Keep, n_branches: int, batch: int, heads: int | None, hw: tuple[int, int],
               keys: int | None, channels: int | None) -> tuple[int, ...]:
    """Shape one step of a point adds to the store (no step axis); for a projection `keys` is its token count."""
    q = hw[0] * hw[1]
    if kind == "projection":
        return (n_branches, batch, keys, channels)
    if kind in ATTENTION:
        k = len(keep.tokens) if (kind == "attn2" and keep.tokens is not None) else keys
        return (n_branches, batch, q, k) if keep.heads == "mean" else (n_branches, batch, heads, q, k)
    return (n_branches, batch, channels, *hw)


def axes(kind: str, keep: Keep) -> tuple[str, ...]:
    """Named axes of a point's kept tensor: ("step", "branch", "batch", "head", "query", "key") for attention,
    (..., "token", "channel") for projections, (..., "channel", "height", "width") for features."""
    steps = () if keep.step_mode in ("sum", "mean") else ("step",)
    if kind == "projection":
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
