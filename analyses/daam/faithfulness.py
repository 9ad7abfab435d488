"""Does a word's map mark where the word acts? Silence the word's cross-attention inside vs outside its map while
generating again from the same seed, and see (with the world's parser) whether the object survives.

    regions = condition_masks(binarize(noun_map))                    # {"inside": (H, W), "outside": ..., ...}
    edit = scale_tokens([[4, 5]], 0.0, mask=regions["inside"][None])  # one row: tokens 4, 5 silenced inside the map
    with edited(pipe, {n: edit for n in select(pipe, kind="attn2")}):
        pipe(prompt, generator=torch.Generator().manual_seed(seed))

CONDITIONS / condition_masks(map_mask)       inside the map, outside it, the map shifted by half the image, everywhere
The edit itself is lab.hooks.scale_tokens with one token list and one mask per batch row.
"""
from __future__ import annotations

import torch

CONDITIONS = ("inside", "outside", "shifted", "everywhere")


def condition_masks(map_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """{condition: (H, W) float mask} for a binarised word map: inside, outside, shifted (same area), everywhere."""
    m = map_mask.float()
    h, w = m.shape
    return {"inside": m, "outside": 1 - m, "shifted": torch.roll(m, shifts=(h // 2, w // 2), dims=(0, 1)),
            "everywhere": torch.ones_like(m)}
