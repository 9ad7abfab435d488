"""Open-vocabulary attention maps (OVAM, Marcos-Manchón et al., CVPR 2024): maps for any text, after generation.

    run = generate(pipe, "a red circle on a white background", queries=True)
    g = open_vocab(run.queries, pipe, "a hexagon")   # GlobalMaps of the new text's tokens, as if it were the prompt
    word_map(g, pipe, "hexagon")                          # (H, W) in [0, 1]

The queries each cross-attention layer computed during generation are kept (capture(queries=True)); afterwards any
text is encoded as the pipeline encodes prompts (``pipe.encode_prompt``; SDXL: both encoders, concatenated),
projected by each layer's to_k, and scored per head as softmax(q k^T / sqrt(d)) over its keys; the result goes
through the same aggregation as DAAM (sum over steps per (layer, head), bicubic upsampling, clamp, mean). With the
prompt itself as the text this reproduces the DAAM maps.
"""
from __future__ import annotations

import torch

from lab.hooks.points import unet_of

from .maps import DEFAULT_BLOCKS, GlobalMaps, aggregate, layer_names, layer_of


@torch.no_grad()
def encode(pipe, text: str) -> torch.Tensor:
    """(1, keys, dim) text states for `text`, exactly as the pipeline conditions its UNet on a prompt."""
    out = pipe.encode_prompt(prompt=text, device=pipe.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=False)
    return out[0]  # SD: (embeds, None); SDXL: (embeds, neg, pooled, neg_pooled)


@torch.no_grad()
def layer_scores(attn, queries: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (steps, heads, q, keys) of `attn` for kept queries (steps, q, heads*d) and text
    states."""
    if attn.norm_cross:
        states = attn.norm_encoder_hidden_states(states)
    key = attn.to_k(states.to(attn.to_k.weight.dtype))  # (1, keys, heads*d)
    heads = attn.heads
    s, q, c = queries.shape
    query = queries.to(key.device, torch.float32).reshape(s, q, heads, c // heads).permute(0, 2, 1, 3)  # (s, h, q, d)
    key = key.float().reshape(1, key.shape[1], heads, c // heads).permute(0, 2, 1, 3)  # (1, h, keys, d)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    return (query @ key.transpose(-1, -2) * attn.scale).softmax(-1)  # (s, heads, q, keys)


@torch.no_grad()
def open_vocab(queries, pipe, text: str, batch: int = 0, steps=None, layers=None, blocks=DEFAULT_BLOCKS,
               resolution=None, heads=None, branch: str = "cond") -> GlobalMaps:
    """Per-token maps of `text` (any words) for image `batch`, from the queries kept while generating it.

        g = open_vocab(run.queries, pipe, "a blue square", steps=range(5))
        word_map(g, pipe, "square")

    Slices as global_maps: steps (step indices the queries were kept at), layers / blocks / resolution, heads,
    branch. The pipeline must be the one that generated the image (its text encoder(s) and UNet projections).
    """
    if queries is None or not any(n.endswith(".to_q") for n in queries):
        raise ValueError("no queries were kept: generate with queries=True (or capture(..., queries=True))")
    names = layer_names(queries, layers, blocks, resolution)
    kept_steps = queries.meta.get("steps") or []
    if steps is None:
        positions, chosen = list(range(len(kept_steps))), None
    else:
        chosen = (int(steps),) if isinstance(steps, int) else tuple(int(s) for s in steps)
        bad = [s for s in chosen if s not in kept_steps]
        if bad or not chosen:
            raise ValueError(f"step {bad[0] if bad else chosen!r} has no kept queries; kept steps: {kept_steps}")
        positions = [kept_steps.index(s) for s in chosen]
    head_list = None if heads is None else ([int(heads)] if isinstance(heads, int) else [int(h) for h in heads])
    states = encode(pipe, text)  # (1, keys, dim)
    modules = dict(unet_of(pipe).named_modules())
    per_layer = []
    for name in names:
        n_batch = queries[name].shape[queries.axes[name].index("batch")]
        if not 0 <= batch < n_batch:
            raise ValueError(f"batch={batch} is out of range: the run had {n_batch} images")
        q = queries.take(name, branch=branch, batch=batch)[positions]  # (steps, q, heads*d)
        probs = layer_scores(modules[layer_of(name)], q, states).sum(0)  # (heads, q, keys)
        if head_list is not None:
            bad = [h for h in head_list if not 0 <= h < probs.shape[0]]
            if bad:
                raise ValueError(f"head {bad[0]} is out of range for {layer_of(name)!r} ({probs.shape[0]} heads)")
            probs = probs[head_list]
        per_layer.append((probs.cpu(), tuple(queries.resolution(name))))
    latent = tuple(queries.meta.get("latent_size") or queries.resolution(names[0]))
    return GlobalMaps(aggregate(per_layer, latent), text, tuple(queries.meta.get("image_size") or latent),
                      tuple(layer_of(n) for n in names), chosen, None if head_list is None else tuple(head_list),
                      branch)
