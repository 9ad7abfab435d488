"""Prompt-to-prompt (Hertz et al., 2022) on lab.hooks: a source and its edits generated in one batch, from one seed,
the edits taking the source row's attention maps through ``trace(..., edits=...)``.

    >>> from analyses.p2p import Request, Control, generate
    >>> out = generate(pipe, [Request("a red circle on a white background", "a green circle on a white background",
    ...                               blend=("circle",))], [Control(cross_steps=0.8, self_steps=0.4, blend=True)],
    ...                steps=25, seed=0, plain=True)                                  # doctest: +SKIP
    >>> out.images["source"].shape, out.images["edit 0"].shape, out.images["plain"].shape   # doctest: +SKIP
    ((1, 128, 128, 3), (1, 128, 128, 3), (1, 128, 128, 3))

Request(source, target, method, reweight, blend)   one edit: method 'swap' | 'refine' | 'reweight' (analyses.p2p.align),
                     reweight {target word: factor} scales that word's cross-attention, blend words bound the edit
Control(cross_steps, self_steps, blend, label)    how: the first steps (an int, or a share of the steps as a float)
                     whose cross- (self-) attention maps are the source's; blend=True edits only where the blend
                     words' maps say (local blending)
generate(pipe, requests, controls, steps, seed, guidance, plain)  -> Edited: uint8 images by row kind, blend masks

The batch holds, per request, the source, one row per Control and (plain=True) the target without control (the
baseline). Only the conditional branch is edited, as in the paper: at each step below cross_steps, an edit row's
cross-attention at key j is the source row's at the keys the Alignment maps j to (its own at added words), times
the reweight factor; below self_steps its self-attention is the source row's (layers of at most 32x32 queries, as
the authors' code does). Local blending keeps, after each step from blend_start on, the source's latents outside
the union of the blend words' maps (summed over layers and the steps so far, in the source and in the edit,
max-pooled, min-max normalised, above blend_threshold; the paper divides by the max, but small models' maps
have a floor that then covers the image): z_edit = z_source + mask * (z_edit - z_source). The maps are the ones
the model made, before the injection replaced them: the edit's trace keeps them (Keep(before_edits=True), summed
over steps, heads averaged, the blend words' keys) and the blend reads its running sums (Trace.so_far).

On a diffusion transformer (SD3 / SD3.5, FLUX.1) cross-attention is the ``image->text`` view of every joint-attention
layer (Flux's single-stream blocks too) and self-attention the ``image->image`` view (and SD3.5's image-only
``attn2``); text queries are left alone. A view is a slice of ONE softmax over [image, text] keys, so its rows do not
sum to one: an injected view gets the source row's distribution within the view, scaled to the edit row's own mass
in that view, ``edit[q, view] = source[q, view] * sum(edit[q, view]) / sum(source[q, view])`` (for image->text through
the Alignment's mapper first). Each view keeps its own total, so every full row still sums to one, whether one view
or both are injected, and how much an image token looks at the text rather than the image stays the edit's own (a
DiT's text tokens differ between the prompts: the source's text/image split is not the edit's to take). The UNet's
rule of injecting self-attention only in layers of at most 32x32 queries has no DiT counterpart (every layer sees
the same token grid, so it would pick all layers or none); on a DiT self-attention is injected in every layer.
The guidance layout is the pipeline's (lab.hooks reads it): SD3's conditional rows are edited, FLUX.1 has no
unconditional branch (dev's guidance is an embedding) so every row is conditional. Local blending reads the maps
on the token grid; the mask is brought to the latent grid as on a UNet, and packed 2x2 per token for Flux's packed
latents (FluxPipeline._pack_latents), so Edited.masks are at latent resolution for every family.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lab.hooks import Keep, points, select, trace
from lab.pipes import family_of

from .align import Alignment, align, token_positions

SELF_MAX_QUERIES = 32 * 32  # a UNet's self-attention is injected only where it has at most this many queries
CROSS_KINDS = {"unet": "attn2", "dit": "image->text"}  # the point kinds of cross- and self-attention
SELF_KINDS = {"unet": "attn1", "dit": "image->image"}


@dataclass(frozen=True)
class Request:
    """One edit: ``Request("a red circle ...", "a green circle ...", method="swap", blend=("circle",))``."""

    source: str
    target: str
    method: str = "swap"
    reweight: dict[str, float] | None = None  # target word -> factor on its cross-attention
    blend: tuple[str, ...] = ()  # words (of the source, the target or both) whose maps bound a blended edit


@dataclass(frozen=True)
class Control:
    """How an edit row is controlled: ``Control(cross_steps=20, self_steps=10, blend=True)``; ints count steps,
    floats are shares of the run's steps."""

    cross_steps: int | float = 0.8
    self_steps: int | float = 0.4
    blend: bool = False
    label: str = ""

    def steps(self, total: int) -> tuple[int, int]:
        """(cross, self) injected step counts for a run of `total` steps."""
        return _count(self.cross_steps, total, "cross_steps"), _count(self.self_steps, total, "self_steps")


@dataclass
class Edited:
    """images[kind] is (requests, H, W, 3) uint8 for kind 'source', each control's label and 'plain'; masks[label]
    is (requests, h, w) float, the last local-blend mask of a blended control (latent resolution)."""

    images: dict[str, np.ndarray]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    alignments: list[Alignment] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _count(value, total: int, name: str) -> int:
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: a share of the steps is between 0.0 and 1.0 (or give an int count)")
        return int(round(value * total))
    if not 0 <= int(value) <= total:
        raise ValueError(f"{name}={value}: give 0..{total} steps (the run has {total}) or a share as a float")
    return int(value)


def layers(pipe, which: str = "cross") -> list[str]:
    """The points an edit injects, forward order: 'cross' (UNet attn2, DiT image->text views) or 'self' (UNet attn1,
    DiT image->image views)."""
    kinds = {"cross": CROSS_KINDS, "self": SELF_KINDS}
    if which not in kinds:
        raise ValueError(f"which={which!r}; valid: 'cross', 'self'")
    return select(pipe, kind=kinds[which]["unet" if family_of(pipe) == "unet" else "dit"])


def generate(pipe, requests, controls=(Control(),), steps: int = 25, seed: int | list[int] = 0,
             guidance: float = 7.5, plain: bool = False, blend_threshold: float = 0.3, blend_start: float = 0.2,
             **call_kwargs) -> Edited:
    """Generate every request's source, its controlled edits and (plain=True) its uncontrolled target in one batch.

    seed: one for all requests or one per request (every row of a request starts from the same noise). call_kwargs go
    to pipe() (height, width; a DiT's max_sequence_length, which the alignment follows).
    """
    dit = family_of(pipe) != "unet"
    requests, controls = list(requests), list(controls)
    if not requests or not controls:
        raise ValueError("generate needs at least one Request and one Control")
    seeds = [seed] * len(requests) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(requests):
        raise ValueError(f"{len(seeds)} seeds for {len(requests)} requests; give one seed or one per request")
    labels = [c.label or f"edit {i}" for i, c in enumerate(controls)]
    if len(set(labels)) != len(labels) or {"source", "plain"} & set(labels):
        raise ValueError(f"control labels {labels} must be distinct and not 'source' or 'plain'")
    msl = call_kwargs.get("max_sequence_length")
    alignments = [align(pipe, r.source, r.target, r.method, msl) for r in requests]
    weights = [_reweight(pipe, r, msl) for r in requests]
    blends = [_blend_tokens(pipe, r, msl) if any(c.blend for c in controls) else None for r in requests]
    per = 1 + len(controls) + int(plain)  # rows per request: source, one per control, plain
    prompts = [p for r in requests for p in [r.source] + [r.target] * (per - 1)]
    plan = _Plan(alignments, weights, blends, [c.steps(steps) for c in controls], [c.blend for c in controls], per,
                 dit)
    cross = layers(pipe, "cross")
    edits = {n: plan.cross_edit for n in cross}
    if any(s for _, s in plan.counts):
        edits.update({n: plan.self_edit for n in layers(pipe, "self")})
    start = int(round(blend_start * steps))
    blended = any(c.blend for c in controls)
    keep = Keep(steps="sum", heads="mean", tokens=plan.keys, branches=("cond",), before_edits=True) if blended else None

    def on_step(pipeline, i, t, kw):
        if i >= start:
            maps = {n: tr.so_far(n) for n in cross}  # each (1, cond rows, q, blend keys): steps 0..i summed
            kw["latents"] = plan.blend_latents(kw["latents"], blend_threshold, maps, pipeline, tr.grid)
        return kw

    gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds for _ in range(per)]
    with trace(pipe, cross if blended else [], keep=keep, edits=edits) as tr:
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np",
                   callback_on_step_end=on_step if blended else None, **call_kwargs).images  # (rows, H, W, 3) in [0, 1]
    images = (np.asarray(out) * 255).round().astype(np.uint8).reshape(len(requests), per, *np.shape(out)[1:])
    kinds = ["source"] + labels + (["plain"] if plain else [])
    result = Edited({k: images[:, i] for i, k in enumerate(kinds)}, alignments=alignments, labels=labels)
    for c, label in enumerate(labels):
        if controls[c].blend and plan.last_masks is not None:
            result.masks[label] = plan.last_masks[:, c]
    return result


def _reweight(pipe, r: Request, msl: int | None = None) -> dict[int, float]:
    return {t: float(f) for word, f in (r.reweight or {}).items() for t in token_positions(pipe, r.target, word, msl)}


def _blend_tokens(pipe, r: Request, msl: int | None = None) -> tuple[list[int], list[int]]:
    """(source keys, target keys) of the blend words; each must be in at least one of the two prompts."""
    if not r.blend:
        raise ValueError(f"a blended Control needs Request.blend words; the request {r.target!r} has none")
    src, dst = [], []
    for word in r.blend:
        s = _maybe(pipe, r.source, word, msl)
        d = _maybe(pipe, r.target, word, msl)
        if not s and not d:
            token_positions(pipe, r.target, word, msl)  # raises, naming the words the tokenizer sees
        src, dst = src + s, dst + d
    return src, dst


def _maybe(pipe, prompt: str, word: str, msl: int | None = None) -> list[int]:
    try:
        return token_positions(pipe, prompt, word, msl)
    except ValueError:
        return []


class _Plan:
    """The edit functions of one batch, and the local blend from the blend words' running maps."""

    def __init__(self, alignments, weights, blends, counts, blended, per, dit: bool = False):
        self.alignments, self.weights, self.blends = alignments, weights, blends
        self.counts, self.blended, self.per, self.dit = counts, blended, per, dit
        self.max_cross = max(c for c, _ in counts)
        # the keys the trace keeps for the blend: every blend word's, source and target
        self.keys = sorted({t for b in blends if b for t in b[0] + b[1]}) if any(blended) else None
        self.sizes: dict[str, tuple[int, int]] = {}  # each cross-attention layer's (h, w) in this run
        self.last_masks = None

    def cross_edit(self, probs: torch.Tensor, ctx) -> torch.Tensor | None:  # probs: (B, heads, q, keys); DiT: a view
        cond = ctx.rows("cond")
        if ctx.step >= self.max_cross:
            return None
        out = probs.clone()
        for r, (a, w) in enumerate(zip(self.alignments, self.weights)):
            src = probs[cond.start + r * self.per]  # (heads, q, keys)
            if a.mapper.shape[0] != probs.shape[-1]:
                raise ValueError(f"{ctx.point!r} has {probs.shape[-1]} keys; the alignment has {a.mapper.shape[0]}")
            mapper, own = a.mapper.to(probs), a.own.to(probs.device)
            new = torch.einsum("hqs,ts->hqt", src, mapper)  # (heads, q, target keys)
            for c, (n_cross, _) in enumerate(self.counts):
                if ctx.step >= n_cross:
                    continue
                row = cond.start + r * self.per + 1 + c
                edited = torch.where(own, probs[row], new)  # (heads, q, keys)
                if self.dit:  # the edit row's own mass on the text keys (the module docstring says why)
                    edited = edited * (probs[row].sum(-1, keepdim=True) / edited.sum(-1, keepdim=True).clamp_min(
                        torch.finfo(edited.dtype).tiny))
                for t, f in w.items():
                    edited[..., t] = edited[..., t] * f
                out[row] = edited
        return out

    def self_edit(self, probs: torch.Tensor, ctx) -> torch.Tensor | None:  # probs: (B, heads, q, q); DiT: a view
        if (probs.shape[2] > SELF_MAX_QUERIES and not self.dit) or all(ctx.step >= s for _, s in self.counts):
            return None
        cond = ctx.rows("cond")
        out = probs.clone()
        for r in range(len(self.alignments)):
            base = cond.start + r * self.per
            for c, (_, n_self) in enumerate(self.counts):
                if ctx.step >= n_self:
                    continue
                row = base + 1 + c
                out[row] = probs[base]  # (heads, q, q)
                if self.dit:  # at the edit row's own mass on the image keys (the module docstring says why)
                    out[row] *= probs[row].sum(-1, keepdim=True) / probs[base].sum(-1, keepdim=True).clamp_min(
                        torch.finfo(probs.dtype).tiny)
        return out

    def blend_latents(self, latents: torch.Tensor, threshold: float, maps: dict, pipe, grid=None) -> torch.Tensor:
        """latents (rows, c, H, W), or Flux's packed (rows, tokens, c * 4), with each blended edit row moved back to
        the source outside the mask; maps {cross-attention layer: (1, cond rows, q, len(self.keys))} summed over the
        steps so far, in forward order; grid: a DiT's token grid (every layer's), None on a UNet."""
        packed = latents.ndim == 3  # Flux packs each 2x2 patch of latents into one token
        size = (2 * grid[0], 2 * grid[1]) if packed else tuple(latents.shape[-2:])
        if grid is not None and not self.sizes:
            self.sizes = {name: tuple(grid) for name in maps}
        if not self.sizes:
            vsf = pipe.vae_scale_factor
            self.sizes = {p.name: p.resolution for p in points(pipe, (size[0] * vsf, size[1] * vsf)) if p.name in maps}
        n = len(self.alignments)
        masks = torch.zeros(n, len(self.counts), *size, device=latents.device)  # (requests, controls, H, W)
        out = latents.clone()
        for r in range(n):
            src = self._mask(self._sum(maps, r, 0), size, threshold)  # (H, W) or None
            for c, blended in enumerate(self.blended):
                if not blended:
                    continue
                own = self._mask(self._sum(maps, r, 1 + c), size, threshold)
                parts = [m for m in (src, own) if m is not None]
                if not parts:
                    continue
                mask = torch.stack(parts).amax(0).to(latents)  # (H, W): the union
                base, row = r * self.per, r * self.per + 1 + c
                m = mask
                if packed:
                    ch = latents.shape[-1] // 4
                    m = pipe._pack_latents(mask.expand(1, ch, *size), 1, ch, *size)[0]  # (tokens, c * 4)
                out[row] = latents[base] + m * (latents[row] - latents[base])  # (c, H, W), Flux (tokens, c * 4)
                masks[r, c] = mask
        self.last_masks = masks.cpu()
        return out

    def _sum(self, maps: dict, r: int, k: int) -> torch.Tensor | None:
        """(1, 1, h, w): row k of request r's blend words' maps summed over the keys, the steps so far and the layers
        (each brought to the largest layer resolution, bilinear); None when its prompt has none of the words."""
        keys = self.blends[r][0 if k == 0 else 1]  # the source row reads the source's keys, the others the target's
        if not keys:
            return None
        cols = [self.keys.index(t) for t in keys]
        size = max(self.sizes.values())
        total = None
        for name, m in maps.items():
            h, w = self.sizes[name]
            m = m[0, r * self.per + k][:, cols].sum(-1).reshape(1, 1, h, w).float()  # (1, 1, h, w)
            if (h, w) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return total

    @staticmethod
    def _mask(s: torch.Tensor | None, size, threshold: float) -> torch.Tensor | None:
        if s is None:
            return None
        s = F.max_pool2d(s, 3, stride=1, padding=1)  # (1, 1, h, w)
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)[0, 0]  # (H, W)
        s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)  # min-max: this model's maps have a floor
        return (s > threshold).float()
