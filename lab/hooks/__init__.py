"""Hooks: name, capture and edit what a Stable Diffusion UNet computes, around ordinary pipeline calls.

    from lab.hooks import points, select, trace, Keep, Cache, scale_tokens, replace_attention, run_until
    names = select(pipe, kind="attn2")                                   # full module paths, forward order
    with trace(pipe, names, keep=Keep(steps="sum", heads="mean")) as tr:
        pipe("a dog on a mat", num_inference_steps=25)
    tr.cache[names[0]].shape, tr.cache.axes[names[0]]                    # (branch, batch, query, key)
    tr.cache.save("run.safetensors"); Cache.load("run.safetensors")

points(model, image_size)      every hookable point (Point: name, kind, block, block_index, resolution, heads, ...):
                               attention layers, their q/k/v/out projections, resnets, transformers, blocks
select(model, kind, block, resolution, pattern, image_size)   names matching all filters
trace(model, names, keep, edits, max_bytes, branches, meta, swaps)   context manager; .cache after the with-block,
                               .so_far(name) during it; .layout() the batch's branches (branches= may name your
                               own: ("uncond", "cond", "perturbed")); traces nest (each with its own Keep);
                               swaps={block: fn(run, ctx)} run in place of a module (feature reuse: lab.hooks.swap)
edited(model, edits, branches) trace(model, [], edits=edits): edit only, keep nothing
Keep(steps, heads, tokens, branches, before_edits)   what to keep: every step, chosen steps, or a sum/mean; heads
                               or their mean; at an edited point the replacement, or the model's own (before_edits)
Cache                          plain data: {name: tensor} + axes + meta; save/load as safetensors
scale_tokens, replace_attention   ready edits: fn(probs, ctx) -> replacement (scale_tokens: per-row tokens/masks)
run_until(unet, point, *args, **kwargs)   run the UNet only until `point`, return its output (DIFT)
"""
from .cache import Cache
from .edits import replace_attention, run_until, scale_tokens
from .keep import Keep
from .points import Point, points, select
from .processor import CaptureProcessor
from .trace import Context, Trace, edited, trace

__all__ = [
    "Cache", "CaptureProcessor", "Context", "Keep", "Point", "Trace", "edited", "points", "replace_attention",
    "run_until", "scale_tokens", "select", "trace",
]
