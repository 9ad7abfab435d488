"""Does a word's map mark where the word acts? Silence the word's cross-attention inside vs outside its map while
generating again from the same seed, and see (with the world's parser) whether the object survives.

    edit = region_edit([[4, 5]], masks[None], factor=0.0)           # one row: tokens 4, 5 silenced where mask is 1
    with trace(pipe, [], edits={n: edit for n in select(pipe, kind="attn2")}):
        pipe(prompt, generator=torch.Generator().manual_seed(seed))

region_edit(tokens_per_row, masks, factor)   like lab.hooks.scale_tokens, with a mask and tokens per batch row
CONDITIONS / condition_masks(map_mask)       inside the map, outside it, the map shifted by half the image, everywhere
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

CONDITIONS = ("inside", "outside", "shifted", "everywhere")


def region_edit(tokens_per_row: Sequence[Sequence[int]], masks: torch.Tensor, factor: float = 0.0,
                branches: Sequence[str] = ("cond",)):
    """Edit fn(probs, ctx) scaling cross-attention to row b's tokens by `factor` where masks[b] (H, W) is 1.

    lab.hooks.scale_tokens takes one mask and one token list for the whole batch; a batch of different prompts needs
    one per row. The mask is resized bilinearly to each layer's resolution and the factor applies as
    1 + (factor - 1) * mask, as scale_tokens does; probabilities are not renormalised.
    """
    masks = torch.as_tensor(masks, dtype=torch.float32)  # (rows, H, W)
    if masks.ndim != 3 or masks.shape[0] != len(tokens_per_row):
        raise ValueError(f"masks must be (rows, H, W) with one row per token list; got {tuple(masks.shape)} for "
                         f"{len(tokens_per_row)} rows")
    tokens = [[int(t) for t in row] for row in tokens_per_row]
    resized: dict[tuple[int, int], torch.Tensor] = {}

    def edit(probs: torch.Tensor, ctx) -> torch.Tensor:  # (B, heads, q, k)
        if ctx.batch != len(tokens):
            raise ValueError(f"region_edit has {len(tokens)} rows but the batch has {ctx.batch}")
        if ctx.resolution not in resized:
            m = F.interpolate(masks[:, None], size=ctx.resolution, mode="bilinear", align_corners=False)
            resized[ctx.resolution] = (1 + (factor - 1) * m.reshape(len(tokens), -1))  # (rows, q)
        scale = resized[ctx.resolution].to(probs.device, probs.dtype)
        out = probs.clone()
        for branch in branches:
            if branch not in ctx.branches:
                continue
            start = ctx.rows(branch).start
            for b, toks in enumerate(tokens):
                out[start + b, :, :, toks] = out[start + b, :, :, toks] * scale[b][None, :, None]  # (heads, q, t)
        return out

    return edit


def condition_masks(map_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """{condition: (H, W) float mask} for a binarised word map: inside, outside, shifted (same area), everywhere."""
    m = map_mask.float()
    h, w = m.shape
    return {"inside": m, "outside": 1 - m, "shifted": torch.roll(m, shifts=(h // 2, w // 2), dims=(0, 1)),
            "everywhere": torch.ones_like(m)}
