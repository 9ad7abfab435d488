"""Ready-made edits for ``trace(..., edits={name: fn})``, and running a UNet only up to a chosen point.

    edits = {name: scale_tokens([2], 0.0) for name in select(pipe, kind="attn2")}   # silence token 2
    edits = {name: replace_attention(source.cache) for name in names}              # prompt-to-prompt style swap
    feats = run_until(unet, "up_blocks.1", latents, t, encoder_hidden_states=text)  # DIFT: stop after that block
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .points import check_names, denoiser_of, points


def scale_tokens(token_indices: Sequence[int] | Sequence[Sequence[int]] | int, factor: float,
                 mask: torch.Tensor | None = None, branches: Sequence[str] = ("cond",)) -> Callable:
    """Edit that multiplies cross-attention to the key tokens `token_indices` by `factor` (0 removes them).

        edits = {name: scale_tokens([1, 2], 2.0) for name in select(pipe, kind="attn2")}
        edits = {name: scale_tokens(3, 0.0, mask=left_half) for name in names}   # only queries where mask is 1
        edits = {name: scale_tokens([[2], [4, 5]], 0.0, mask=masks) for name in names}   # per prompt of a batch of 2

    token_indices: one list for every row of the batch, or one list per row (a batch of different prompts).
    mask: (H, W) tensor in [0, 1] over the image, or (rows, H, W) with one mask per row; resized (bilinear) to each
    layer's resolution, the factor applies as 1 + (factor - 1) * mask. branches: which guidance branches are edited
    (the unconditional prompt has different tokens, so by default only 'cond'). Probabilities are not renormalised.
    """
    if isinstance(token_indices, int):
        token_indices = [token_indices]
    per_row = any(not isinstance(t, int) and not (torch.is_tensor(t) and t.ndim == 0) for t in token_indices)
    rows_tokens = [[int(t) for t in row] for row in token_indices] if per_row else None
    tokens = None if per_row else [int(t) for t in token_indices]
    branches = (branches,) if isinstance(branches, str) else tuple(branches)
    masks = None if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    if masks is not None and masks.ndim not in (2, 3):
        raise ValueError(f"scale_tokens: mask must be (H, W) or (rows, H, W); got shape {tuple(masks.shape)}")
    if masks is not None and masks.ndim == 3 and rows_tokens is not None and len(masks) != len(rows_tokens):
        raise ValueError(f"scale_tokens: {len(masks)} masks for {len(rows_tokens)} rows of tokens")

    def edit(probs: torch.Tensor, ctx) -> torch.Tensor:  # probs: (B, heads, q, k)
        n_rows = len(rows_tokens) if rows_tokens is not None else (len(masks) if masks is not None
                                                                       and masks.ndim == 3 else None)
        if n_rows is not None and n_rows != ctx.batch:
            raise ValueError(f"scale_tokens: {n_rows} rows of tokens or masks but the batch at {ctx.point!r} has "
                             f"{ctx.batch} prompts")
        every = [t for row in rows_tokens for t in row] if rows_tokens is not None else tokens
        bad = [t for t in every if not -probs.shape[-1] <= t < probs.shape[-1]]
        if bad:
            raise ValueError(f"scale_tokens: token {bad[0]} out of range for {probs.shape[-1]} keys at {ctx.point!r}")
        if masks is None:
            scale = torch.full((1, probs.shape[2], 1), float(factor), dtype=probs.dtype, device=probs.device)
        else:
            if ctx.resolution is None:
                raise ValueError(f"scale_tokens: no resolution known for {ctx.point!r} to resize the mask to")
            m = masks.to(probs.device).reshape(-1, 1, *masks.shape[-2:])  # (1 or rows, 1, H, W)
            m = F.interpolate(m, size=ctx.resolution, mode="bilinear", align_corners=False)  # (1 or rows, 1, h, w)
            if m[0].numel() != probs.shape[2]:
                raise ValueError(f"scale_tokens: {ctx.point!r} has {probs.shape[2]} queries, not {ctx.resolution}")
            scale = (1 + (factor - 1) * m.reshape(len(m), -1, 1)).to(probs.dtype)  # (1 or rows, q, 1)
        out = probs.clone()
        for branch in branches:
            if branch not in ctx.branches:
                continue
            rows = ctx.rows(branch)
            if rows_tokens is None and len(scale) == 1:
                out[rows, :, :, tokens] = out[rows, :, :, tokens] * scale[0]  # (b, heads, q, len(tokens))
                continue
            for b in range(ctx.batch):  # one row at a time: its own tokens and/or its own mask
                toks = rows_tokens[b] if rows_tokens is not None else tokens
                row = rows.start + b
                out[row, :, :, toks] = out[row, :, :, toks] * scale[b if len(scale) > 1 else 0]  # (heads, q, t)
        return out

    return edit


def replace_attention(from_cache, steps: Sequence[int] | None = None) -> Callable:
    """Edit that swaps a layer's attention probabilities for those saved in `from_cache` at the same step.

        with trace(pipe, names, keep=Keep(steps="all")) as src:
            pipe("a cat on a mat", generator=torch.Generator().manual_seed(0))
        edits = {n: replace_attention(src.cache, steps=range(10)) for n in names}
        with trace(pipe, [], edits=edits):
            pipe("a dog on a mat", generator=torch.Generator().manual_seed(0))

    The cache must hold the layer with every head and every key (Keep(heads="all", tokens=None)); with a step axis
    the maps of the same step are used, without one (steps summed/averaged) the same maps at every step. Branches
    are matched by label: those the cache did not keep are left as they are. steps: where to replace (default all).
    """
    only = None if steps is None else {int(s) for s in steps}

    def edit(probs: torch.Tensor, ctx) -> torch.Tensor | None:  # probs: (B, heads, q, k)
        if only is not None and ctx.step not in only:
            return None
        name, ax = ctx.point, from_cache.axes.get(ctx.point)
        if ax is None:
            raise ValueError(f"replace_attention: the cache has no {name!r}; it has {len(from_cache)} points "
                             f"(e.g. {', '.join(list(from_cache)[:3])})")
        if "head" not in ax or from_cache.meta.get("keep", {}).get("tokens") is not None:
            raise ValueError(f"replace_attention: {name!r} was kept with axes {ax} and tokens "
                             f"{from_cache.meta.get('keep', {}).get('tokens')}; keep every head and token")
        saved = from_cache[name]
        if "step" in ax:
            kept = from_cache.meta.get("steps") or []
            if ctx.step not in kept:
                raise ValueError(f"replace_attention: the cache has no step {ctx.step} for {name!r}; it kept steps "
                                 f"{kept}; capture with Keep(steps='all') or pass steps=")
            saved = saved[kept.index(ctx.step)]  # (branch, batch, heads, q, k)
        out = probs.clone()
        for i, branch in enumerate(from_cache.meta.get("branches") or []):
            if branch not in ctx.branches:
                continue
            src = saved[i].to(probs.device, probs.dtype)  # (batch, heads, q, k)
            rows = ctx.rows(branch)
            if src.shape[1:] != out.shape[1:] or src.shape[0] not in (1, ctx.batch):
                raise ValueError(f"replace_attention: saved maps for {name!r} are {tuple(src.shape)}, this run needs "
                                 f"({ctx.batch}, {', '.join(map(str, out.shape[1:]))})")
            out[rows] = src
        return out

    return edit


class _Stop(Exception):
    """Raised from a forward hook to end a denoiser forward early; carries the output. Caught by run_until only."""

    def __init__(self, output):
        super().__init__("stopped")
        self.output = output


def run_until(unet, point: str, *args, **kwargs) -> torch.Tensor:
    """Run the denoiser `unet(*args, **kwargs)` only until `point` has produced its output, and return that output.

        feats = run_until(unet, "up_blocks.1", latents, t, encoder_hidden_states=text)   # (B, c, h, w)
        feats = run_until(pipe.transformer, "transformer_blocks.6", **dit_kwargs)       # image stream (B, c, h, w)

    A block returns its hidden states (for down blocks the first element of its (hidden, skips) output; for a DiT
    block its image tokens as (B, c, h, w), or with ``:text`` its text stream), like a trace keeps them. The rest of
    the model is not computed. Works inside a trace (the trace sees the call as a step). `unet` may be a pipeline.
    """
    from .dit import family, grid_of, inputs, split_name
    from .outputs import read

    model = denoiser_of(unet)
    check_names(model, [point])
    kind = {p.name: p.kind for p in points(model)}[point]
    module = dict(model.named_modules())[split_name(point)[0]]
    grid = None
    if family(model) != "unet":
        grid, _ = grid_of(model, inputs(family(model), args, kwargs)[0], args, kwargs)

    def stop(mod, inputs_, output):
        raise _Stop(read(output, kind, grid))

    handle = module.register_forward_hook(stop)
    try:
        model(*args, **kwargs)
    except _Stop as s:
        return s.output
    finally:
        handle.remove()
    raise RuntimeError(f"the {type(model).__name__} forward finished without running {point!r}")
