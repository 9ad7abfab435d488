"""What a hooked module returned, as a trace keeps or edits it, and that output with an edited tensor put back.

    x = read(output, "block", grid)            # UNet block: hidden states (B, c, h, w); DiT block: image stream
    output = write(output, "block", grid, x2)   # the same structure with x2 in place of what read() gave

A DiT block returns (text, image) token streams: 'block' reads the image stream as (B, c, h, w) (tokens are the
grid row-major), 'text_block' the text stream (B, tokens, c). Everything else (UNet blocks, resnets, transformers,
projections) is the tensor itself, the first of a tuple, or `.sample`.
"""
from __future__ import annotations

import torch


def read(output, kind: str, grid: tuple[int, int] | None) -> torch.Tensor:
    if _streams(output, kind):
        if kind == "text_block":
            return output[0]  # (B, tokens, c)
        img = output[1]  # (B, h*w, c)
        return img.transpose(1, 2).reshape(img.shape[0], img.shape[2], *grid)  # (B, c, h, w)
    return hidden(output)


def write(output, kind: str, grid: tuple[int, int] | None, new: torch.Tensor):
    if _streams(output, kind):
        if kind == "text_block":
            return type(output)((new, output[1]))
        return type(output)((output[0], new.flatten(2).transpose(1, 2)))  # (B, h*w, c)
    return replace(output, hidden(output), new)


def _streams(output, kind: str) -> bool:
    """A DiT block's (text, image) output (text may be None: SD3's last block)."""
    return kind in ("block", "text_block") and isinstance(output, tuple) and len(output) == 2 and (
        output[0] is None or output[0].ndim == 3) and torch.is_tensor(output[1]) and output[1].ndim == 3


def hidden(output):
    """The hidden states of a module output: the tensor itself, the first of a tuple, or `.sample`."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def replace(output, old: torch.Tensor, new: torch.Tensor):
    """`output` with every occurrence of tensor `old` (by identity, also inside nested tuples) replaced by `new`."""
    if output is old:
        return new
    if isinstance(output, (tuple, list)):
        return type(output)(replace(o, old, new) for o in output)
    if hasattr(output, "sample") and output.sample is old:
        return type(output)(sample=new)
    return output
