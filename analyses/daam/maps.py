"""DAAM heat maps from a captured Cache: raw cross-attention -> global maps (per token) -> word maps -> masks.

    g = global_maps(run, batch=0)                                # the published method: every down/up layer and head
    g = global_maps(run, steps=range(0, 10), resolution=16, branch="uncond")   # a slice (slices=True)
    m = word_map(g, tok, "hexagon")                              # (H, W) in [0, 1] at the image size
    masks = binarize(m, tau=0.4)                                 # (H, W) bool
    word_maps(g, tok)                                            # {word: (H, W)} for every word of the prompt

global_maps(run, batch, steps, layers, blocks, resolution, heads, branch)   -> GlobalMaps (keys, h, w); run: a Run,
                                   a Capture or one Cache; each slice is read from the cache that holds it (sources.py);
                                   a DiT's run (SD3, Flux: dit.py) or a ConceptAttention run (concept.py) the same way
aggregate(layer_probs, latent)     the method's merge of per-layer attention: upsample, clamp, mean
word_map(g, tokenizer, word, occurrence, size, relative) / word_maps(g, tokenizer, size, relative)
expand(map, size) / binarize(map, tau) / token_total(g, tokenizer)
layer_names(run, layers, blocks, resolution)   the attn2 layers a slice selects

The method (Tang et al., 2023): cross-attention probabilities of each layer are summed over the chosen steps per
(layer, head), each (h, w) map is upsampled bicubically to the latent size and clamped at 0, and the maps are averaged
over layers and heads. A slice read from heads averaged at each step (run.slices) averages first and clamps after:
the same where no head's upsampled value is negative (always at the latent resolution, where nothing is
upsampled), else a little smaller (a clamped mean is at most the mean of the clamped heads); GlobalMaps.heads_averaged
says so. On the built-in model (tests/test_daam_slices.py) the gap is at most 4% of a map's maximum (0.13% on
average) and the masks at tau = 0.4 agree on more than 99.6% of the pixels. A word's map is the mean over its tokens
(every occurrence, or one), expanded bicubically to the image size and min-max normalised; binarised at tau = 0.4.
On a diffusion transformer every layer is on one token grid: nothing is upsampled, and averaging heads first is exact
(dit.py); word_map / word_maps then take the pipeline, whose tokenizers align the words in each text window.
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from . import dit
from .sources import caches, choose, widest
from .words import max_position, occurrences, tokenizer_of, words

BLOCKS = ("down", "mid", "up")
DIT_BLOCKS = dit.BLOCKS  # 'double' (SD3's blocks, Flux's double-stream ones), 'single' (Flux's single-stream ones)
DEFAULT_BLOCKS = ("down", "up")
TAU = 0.4


@dataclass
class GlobalMaps:
    """Per-token heat maps of one image: ``maps[k]`` is the (h, w) map (latent size) of key position k.

    keys: the key positions the maps hold, in order (None: every position, maps[k] is position k). The other fields
    record the slice: prompt, image_size (H, W), layers, steps (None: all captured, or summed in the capture), heads
    (None: all), branch; heads_averaged: read from heads averaged at each step (run.slices), the method's
    clamp-then-average approximated by average-then-clamp (never on a DiT, where it is exact). context: a DiT's text
    windows ([{"encoder": "clip" | "t5", "keys": [start, stop]}], None for a UNet); concepts: the concepts of a
    ConceptAttention run (maps[i] is concept i; None otherwise).
    """

    maps: torch.Tensor  # (keys, h, w), float32, >= 0
    prompt: str
    image_size: tuple[int, int]
    layers: tuple[str, ...]
    steps: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    branch: str = "cond"
    keys: tuple[int, ...] | None = None
    heads_averaged: bool = False
    context: tuple | None = None
    concepts: tuple[str, ...] | None = None

    def token(self, position: int) -> torch.Tensor:
        """The (h, w) map of key position `position`."""
        if self.keys is None:
            if not 0 <= position < self.maps.shape[0]:
                raise ValueError(f"token position {position} is out of range; the maps hold {self.maps.shape[0]} keys")
            return self.maps[position]
        if position not in self.keys:
            raise ValueError(f"token position {position} was not captured (Keep(tokens=...) kept {list(self.keys)})")
        return self.maps[self.keys.index(position)]


def block_of(name: str) -> str:
    """'down' | 'mid' | 'up' for a UNet's full module path, 'double' | 'single' for a DiT's."""
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up", "transformer_blocks": "double",
            "single_transformer_blocks": "single"}.get(name.split(".")[0], "other")


def layer_of(name: str) -> str:
    """The attention layer a cache key belongs to: the key itself, or the layer of a '...attn2.to_q' key."""
    return name[: -len(".to_q")] if name.endswith(".to_q") else name


def layer_names(cache, layers=None, blocks: Sequence[str] | str | None = DEFAULT_BLOCKS, resolution=None) -> list[str]:
    """The cache keys of the captured attn2 layers a slice selects, in forward order.

        layer_names(run, blocks=None, resolution=8)    # a Run / Capture: the layers of its widest cache

    layers: full names or globs (``"up_blocks.1.*"``), or None for all; blocks: 'down' / 'mid' / 'up' or a tuple
    (default down and up, as published; None for all; on a DiT 'double' / 'single', default both); resolution: an
    int (square), (h, w), or a list of those.
    """
    cache = widest(cache)
    kinds = cache.meta.get("kinds") or {}
    captured = [n for n in cache if (kinds.get(n, "attn2") in ("attn2", "image->text") and "key" in cache.axes[n])
                or n.endswith(".to_q")]  # attention maps, or the queries (their to_q projections)
    on_dit = any(kinds.get(n) == "image->text" for n in captured)
    if on_dit and blocks is DEFAULT_BLOCKS:
        blocks = None  # a DiT's published maps aggregate every joint-attention layer
    names = list(captured)
    if layers is not None:
        globs = [layers] if isinstance(layers, str) else list(layers)
        names = [n for n in names if any(fnmatch.fnmatchcase(layer_of(n), g) for g in globs)]
    elif blocks is not None:
        blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        valid = DIT_BLOCKS if on_dit else BLOCKS
        bad = [b for b in blocks if b not in valid]
        if bad:
            raise ValueError(f"unknown block {bad[0]!r}; blocks: {', '.join(valid)}")
        names = [n for n in names if block_of(n) in blocks]
    if resolution is not None:
        wanted = _resolutions(resolution)
        names = [n for n in names if tuple(cache.resolution(n)) in wanted]
    if not names:
        have = ", ".join(f"{layer_of(n)} ({'x'.join(map(str, cache.resolution(n)))})" for n in captured) or "none"
        raise ValueError(f"no captured cross-attention layer matches layers={layers!r}, blocks={blocks!r}, "
                         f"resolution={resolution!r}; captured: {have}")
    return names


def _resolutions(resolution) -> set[tuple[int, int]]:
    if isinstance(resolution, int):
        return {(resolution, resolution)}
    if isinstance(resolution, tuple) and len(resolution) == 2 and all(isinstance(r, int) for r in resolution):
        return {resolution}
    return {r for x in resolution for r in _resolutions(x)}


def aggregate(layer_probs: Iterable[tuple[torch.Tensor, tuple[int, int]]], latent: tuple[int, int]) -> torch.Tensor:
    """Merge per-layer attention into per-token maps: the method's upsample, clamp and mean over (layer, head).

        aggregate([(probs, (16, 16)), (probs8, (8, 8))], latent=(16, 16))   # -> (keys, 16, 16)

    layer_probs: (probs (heads, queries, keys) summed over steps, (h, w)) per layer, queries being h*w row-major;
    or (probs (1, queries, keys), (h, w), n): the mean of n heads, which counts as n heads (clamped after averaging).
    """
    total, count = None, 0
    for probs, (h, w), *mean_of in layer_probs:
        heads, q, k = probs.shape
        if q != h * w:
            raise ValueError(f"a layer has {q} queries, not {h}x{w}")
        x = probs.float().permute(0, 2, 1).reshape(heads, k, h, w)  # (heads, keys, h, w)
        if (h, w) != tuple(latent):
            x = F.interpolate(x, size=tuple(latent), mode="bicubic", align_corners=False)  # (heads, keys, H, W)
        x = x.clamp_(min=0).sum(0)  # (keys, lat_h, lat_w)
        if mean_of:
            x, heads = x * mean_of[0], mean_of[0]  # the mean of n heads weighs as n heads
        total = x if total is None else total.add_(x)
        count += heads
    if total is None:
        raise ValueError("no layer to aggregate")
    return total / count  # (keys, lat_h, lat_w)


def global_maps(run, batch: int = 0, steps=None, layers=None, blocks=DEFAULT_BLOCKS, resolution=None,
                heads=None, branch: str = "cond", prompt: str | None = None) -> GlobalMaps:
    """Per-token maps of image `batch` of a captured run, over the slice asked for (default: the published method).

        g = global_maps(run)                                       # every step, down+up layers, every head, cond
        g = global_maps(run, steps=range(10, 20), blocks="up", branch="uncond")   # from run.slices: heads averaged
        g = global_maps(run, heads=0)                              # from run.cache: every step summed, head 0

    run: a Run or Capture (each slice is read from the cache that holds it: the published run.cache, the per-head
    run.heads, or the head-averaged run.slices, see sources.choose), or one lab.hooks Cache. steps: step indices
    (needs slices=True, or head_steps=); layers / blocks / resolution: see layer_names; heads: an int or a list
    (head indices of every selected layer: the published cache has them summed over all steps, cond branch; at
    other steps or the uncond branch capture head_steps=); branch: 'cond' or 'uncond' (the uncond keys are the
    negative prompt's tokens, '' by default: at a word's positions they are padding). prompt: the text the key
    positions belong to (default: the prompt captured for this image). A DiT's run (SD3, Flux) is read the same way,
    its blocks 'double' / 'single'; a ConceptAttention run gives the concepts' maps (concept.global_maps).
    """
    if caches(run)[0].meta.get("daam", {}).get("method") == "concept":
        from . import concept

        if resolution is not None or prompt is not None:
            raise ValueError("resolution= and prompt= do not apply to ConceptAttention maps (one grid, no words)")
        return concept.global_maps(run, batch, steps, layers, None if blocks is DEFAULT_BLOCKS else blocks, heads,
                                   branch)
    names = layer_names(run, layers, blocks, resolution)
    cache, step_pos, chosen, averaged = choose(run, names, steps, heads, branch)
    meta = cache.meta
    head_list = None if heads is None else ([int(heads)] if isinstance(heads, int) else [int(h) for h in heads])
    per_layer = []
    for name in names:
        axes = cache.axes[name]
        n_batch = cache[name].shape[axes.index("batch")]
        if not 0 <= batch < n_batch:
            raise ValueError(f"batch={batch} is out of range: the run had {n_batch} images")
        t = cache.take(name, branch=branch, batch=batch).float()  # ([step,] [head,] q, k)
        if "step" in axes:
            t = t[step_pos].sum(0) if step_pos is not None else t.sum(0)  # ([head,] q, k)
        if "head" not in axes:
            per_layer.append((t.unsqueeze(0), tuple(cache.resolution(name)), meta["heads"][name]))  # (1, q, k)
            continue
        if head_list is not None:
            bad = [h for h in head_list if not 0 <= h < t.shape[0]]
            if bad:
                raise ValueError(f"head {bad[0]} is out of range for {name!r}, which has {t.shape[0]} heads")
            t = t[head_list]  # (heads, q, k)
        per_layer.append((t, tuple(cache.resolution(name))))
    latent = tuple(meta.get("token_grid") or meta.get("latent_size") or cache.resolution(names[0]))  # DiT: one grid
    maps = aggregate(per_layer, latent)  # (keys, h, w)
    kept_tokens = (meta.get("keep") or {}).get("tokens")
    context = meta.get("context")
    return GlobalMaps(maps, prompt if prompt is not None else prompt_of(run, batch),
                      tuple(meta.get("image_size") or latent), tuple(names), chosen,
                      None if head_list is None else tuple(head_list), branch,
                      None if kept_tokens is None else tuple(kept_tokens), averaged and context is None,
                      None if context is None else tuple(context))


def prompt_of(run, batch: int = 0) -> str:
    """The prompt of image `batch` of a Run / Capture / Cache: as given to capture(), else as decoded from the tokens
    the encoder saw."""
    meta = widest(run).meta
    prompts = (meta.get("daam") or {}).get("prompts") or meta.get("prompt")
    if not prompts:
        raise ValueError("the cache records no prompt; pass prompt= (the text the run was generated from)")
    per = meta.get("num_images_per_prompt") or 1
    return prompts[min(batch // per, len(prompts) - 1)]


def expand(heat: torch.Tensor, size: tuple[int, int] | int, normalize: bool = True) -> torch.Tensor:
    """A (h, w) map at `size` pixels (bicubic), min-max normalised to [0, 1] unless normalize=False."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = heat.float()[None, None]  # (1, 1, h, w)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)  # (1, 1, H, W)
    x = x[0, 0]
    if normalize:
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return x


def binarize(heat: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The mask of a normalised map: heat > tau (the paper uses 0.4, and reports 0.3 and 0.5)."""
    return heat > tau


def token_total(g: GlobalMaps, tokenizer) -> torch.Tensor:
    """(h, w) sum of the maps of every prompt token (start and end tokens excluded): the denominator of relative
    maps. On a DiT `tokenizer` is the pipeline: every token of each text window."""
    if g.context is not None:
        return torch.stack([g.token(k) for k in dit.prompt_keys(g, tokenizer)]).sum(0)
    tokenizer = tokenizer_of(tokenizer)
    n = min(len(tokenizer.tokenize(g.prompt)), max_position(tokenizer))
    if n == 0:
        raise ValueError(f"the prompt {g.prompt!r} is empty: it has no words to map")
    return torch.stack([g.token(t) for t in range(1, n + 1)]).sum(0)


def word_map(g: GlobalMaps, tokenizer, word: str, occurrence: int | None = None, size=None,
             normalize: bool = True, relative: bool = False) -> torch.Tensor:
    """(H, W) map of `word` (or a phrase) in [0, 1]: the mean of its tokens' maps over every occurrence (or one).

        word_map(g, pipe, "hexagon")            # 'hex' + 'agon</w>', both occurrences if it occurs twice
        word_map(g, pipe, "a", occurrence=1)    # the second 'a' only

    tokenizer: the tokenizer (or the pipeline: SDXL aligns with its first; a DiT's maps need the pipeline, whose
    tokenizers align the word in each text window: dit.align, which warns when a window cut the word off). size:
    pixels (default the image size). relative: divide by the sum of every prompt token's map first (the reference
    code's normalize=True), so what all words share cancels and what is particular to this word remains. Not the
    published default. ConceptAttention maps (g.concepts): `word` is one of the concepts.
    """
    if g.concepts is not None:
        from .concept import concept_map

        return concept_map(g, word, size, normalize, relative)
    if g.context is not None:
        found = dit.align(g, tokenizer, word, occurrence)
        if found.note:
            warnings.warn(found.note, stacklevel=2)
        tokens = list(found.keys)
    else:
        tokens = [t for w in occurrences(tokenizer_of(tokenizer), g.prompt, word, occurrence) for t in w.tokens]
    heat = torch.stack([g.token(t) for t in tokens]).mean(0)  # (h, w)
    if relative:
        heat = heat / (token_total(g, tokenizer) + 1e-6)
    return expand(heat, size or g.image_size, normalize)


def word_maps(g: GlobalMaps, tokenizer, size=None, normalize: bool = True,
              relative: bool = False) -> dict[str, torch.Tensor]:
    """{word: (H, W) map} for every word of the prompt (lowercased; a repeated word is merged over occurrences).

    Words cut off by the text encoder's token limit have no map and are left out. relative: as in word_map. On a
    DiT `tokenizer` is the pipeline and a word's keys are those of every window that holds it; ConceptAttention
    maps give {concept: map}.
    """
    if g.concepts is not None:
        from .concept import concept_map

        return {c: concept_map(g, c, size, normalize, relative) for c in g.concepts}
    if g.context is not None:
        groups = dit.word_keys(g, tokenizer)
    else:
        tokenizer = tokenizer_of(tokenizer)
        groups = {}
        for w in words(tokenizer, g.prompt):
            if w.kept:
                groups.setdefault(w.text.lower(), []).extend(w.tokens)
    if not groups:
        raise ValueError(f"the prompt {g.prompt!r} is empty: it has no words to map")
    size = size or g.image_size
    total = token_total(g, tokenizer) + 1e-6 if relative else 1.0
    return {word: expand(torch.stack([g.token(t) for t in toks]).mean(0) / total, size, normalize)
            for word, toks in groups.items()}
