"""Every hookable point of a diffusers denoiser, named by its real module path, in forward order.

UNet2DConditionModel (SD 1.x, 2.x, SDXL) here; SD3 / SD3.5 and FLUX.1 transformers in lab.hooks.dit (joint
attention, its four views ``<attn path>:image->text`` etc., both streams' block outputs).

    pts = points(unet, image_size=(512, 512))           # list[Point], forward order
    names = select(unet, kind="attn2", block="up")       # list[str] of full module paths
    check_names(unet, ["up_blocks.1.attentions.0.transformer_blocks.0.attn2"])

Kinds: ``attn1`` (self-attention), ``attn2`` (cross-attention), ``projection`` (an attention layer's ``to_q``,
``to_k``, ``to_v`` or ``to_out.0``: output (batch, token, channel), the tokens being the h*w queries, or for the
keys and values of ``attn2`` the text tokens), ``resnet`` (a ResnetBlock2D), ``transformer`` (a Transformer2DModel,
``...attentions.j``: output (batch, channel, h, w)) and ``block`` (``down_blocks.i``, ``mid_block``,
``up_blocks.i``; output hidden states). Resolution is the spatial size (h, w) of a point's tensors for an image of
``image_size`` pixels: latent = image // vae_scale_factor, halved (rounding up) by each down block's downsampler.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from torch import nn

from .dit import JOINT_KINDS, dit_points, family

KINDS = ("attn1", "attn2", "block", "projection", "resnet", "transformer", "text_block", *JOINT_KINDS)
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # in the order an attention layer calls them
BLOCKS = ("down", "mid", "up", "double", "single")


@dataclass(frozen=True)
class Point:
    """One hookable module: ``Point(name='mid_block.attentions.0.transformer_blocks.0.attn2', kind='attn2', ...)``.

    resolution is (h, w) of the point's tensors (attention queries are h*w of them), None without an image size;
    for a DiT the image token grid after patching. heads / head_dim are None for non-attention points; channels is the
    feature width of the output (inner width heads*head_dim for attention). text_tokens: a DiT's text keys (None for
    a UNet or when unknown); tokens: 'image' | 'text' | 'joint', whose tokens a DiT projection or stream carries.
    """

    name: str
    kind: str
    block: str
    block_index: int
    resolution: tuple[int, int] | None
    heads: int | None
    head_dim: int | None
    channels: int | None = None
    text_tokens: int | None = None
    tokens: str | None = None

    def reads_text(self) -> bool:
        """True for the key and value projections of cross-attention, whose tokens are the text's, not h*w."""
        if self.tokens is not None:
            return self.tokens == "text"
        return self.kind == "projection" and self.name.endswith((".attn2.to_k", ".attn2.to_v"))


def denoiser_of(model) -> nn.Module:
    """The denoiser of a pipeline (``pipe.unet`` or ``pipe.transformer``) or the model itself, also under
    torch.compile: a UNet2DConditionModel, SD3Transformer2DModel or FluxTransformer2DModel; anything else is refused.

        denoiser_of(pipe)    # pipe.transformer for StableDiffusion3Pipeline / FluxPipeline, pipe.unet for SD / SDXL
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    supported = (UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel)
    if isinstance(model, supported):
        return model
    if isinstance(getattr(model, "_orig_mod", None), supported):
        return model._orig_mod
    for attr in ("unet", "transformer"):
        inner = getattr(model, attr, None)
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile(pipe.unet): hook the modules the compiled one runs
        if isinstance(inner, supported):
            return inner
    what = type(model).__name__
    inner = next((f"{a}={type(getattr(model, a)).__name__}" for a in ("transformer", "unet", "prior")
                  if isinstance(getattr(model, a, None), nn.Module)), None)
    raise NotImplementedError(
        f"{what}{f' ({inner})' if inner else ''} is not supported yet: lab.hooks supports diffusers "
        "UNet2DConditionModel (Stable Diffusion 1.x, 2.x, SDXL), SD3Transformer2DModel (SD3, SD3.5) and "
        "FluxTransformer2DModel (FLUX.1), and pipelines that have one as pipe.unet or pipe.transformer"
    )


def unet_of(model) -> nn.Module:
    """The UNet2DConditionModel of a pipeline or the model itself (for UNet-only analyses); a DiT is refused."""
    denoiser = denoiser_of(model)
    if family(denoiser) != "unet":
        raise NotImplementedError(f"{type(denoiser).__name__} is a diffusion transformer; this needs a "
                                  "UNet2DConditionModel (Stable Diffusion 1.x, 2.x, SDXL)")
    return denoiser


def _as_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def level_resolutions(unet: nn.Module, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Resolution inside each down block: [latent, latent/2, ...] (rounding up, as the stride-2 convolutions do)."""
    h, w = latent_hw
    out = []
    for blk in unet.down_blocks:
        out.append((h, w))
        if getattr(blk, "downsamplers", None):
            h, w = (h + 1) // 2, (w + 1) // 2
    return out


def _children(container, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{i}", m) for i, m in enumerate(container)] if container is not None else []


def _out_channels(module: nn.Module) -> int | None:
    resnets = getattr(module, "resnets", None)
    if resnets is not None and len(resnets):
        return resnets[-1].out_channels
    return getattr(module, "out_channels", None)


def points(model, image_size=None, vae_scale_factor: int | None = None, text_tokens: int | None = None
           ) -> list[Point]:
    """All hookable points of a denoiser (or a pipeline's) in forward order.

        pts = points(pipe, image_size=512)
        [p.name for p in pts if p.kind == "attn2" and p.resolution == (16, 16)]

    image_size: pixels, int or (h, w); without it every resolution is None. vae_scale_factor: defaults to
    pipe.vae_scale_factor for a pipeline, 8 for a bare model. text_tokens (DiTs): the text keys, by default the
    pipelines' defaults (lab.hooks.dit.layout).
    """
    unet = denoiser_of(model)
    if family(unet) != "unet":
        from .dit import layout

        lay = layout(model, image_size, vae_scale_factor, text_tokens)
        return dit_points(unet, lay.grid, lay.text)
    if vae_scale_factor is None:
        vae_scale_factor = getattr(model, "vae_scale_factor", None) or 8
    levels = None
    if image_size is not None:
        ih, iw = _as_hw(image_size)
        levels = level_resolutions(unet, (ih // vae_scale_factor, iw // vae_scale_factor))
    n = len(unet.down_blocks)
    res = (lambda level: levels[level]) if levels else (lambda level: None)

    out: list[Point] = []
    blocks = [("down", i, f"down_blocks.{i}", b, i) for i, b in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(("mid", 0, "mid_block", unet.mid_block, n - 1))
    blocks += [("up", i, f"up_blocks.{i}", b, n - 1 - i) for i, b in enumerate(unet.up_blocks)]
    for block, index, bname, bmod, level in blocks:
        r = res(level)
        resnets = _children(getattr(bmod, "resnets", None), f"{bname}.resnets")
        attentions = _children(getattr(bmod, "attentions", None), f"{bname}.attentions")
        # forward order: resnets.j then attentions.j (in the mid block attentions.j sits between resnets j and j+1)
        for j in range(max(len(resnets), len(attentions))):
            if j < len(resnets):
                rname, rmod = resnets[j]
                out.append(Point(rname, "resnet", block, index, r, None, None, rmod.out_channels))
            if j < len(attentions):
                out += _transformer_points(*attentions[j], block, index, r)
        if block == "down" and getattr(bmod, "downsamplers", None) and r is not None:
            r = ((r[0] + 1) // 2, (r[1] + 1) // 2)
        if block == "up" and getattr(bmod, "upsamplers", None) and levels is not None:
            r = res(level - 1) if level > 0 else (r[0] * 2, r[1] * 2)
        out.append(Point(bname, "block", block, index, r, None, None, _out_channels(bmod)))
    return out


def _transformer_points(tname: str, tmod: nn.Module, block: str, index: int, r) -> list[Point]:
    pts = []
    for k, tb in enumerate(getattr(tmod, "transformer_blocks", [])):
        for kind in ("attn1", "attn2"):
            attn = getattr(tb, kind, None)
            if attn is None or not hasattr(attn, "processor"):
                continue
            inner = attn.to_q.out_features
            aname = f"{tname}.transformer_blocks.{k}.{kind}"
            modules = dict(attn.named_modules())
            for proj in PROJECTIONS:  # they run inside the layer, so before it ends
                if isinstance(modules.get(proj), nn.Linear):
                    pts.append(Point(f"{aname}.{proj}", "projection", block, index, r, attn.heads, inner // attn.heads,
                                     modules[proj].out_features))
            pts.append(Point(aname, kind, block, index, r, attn.heads, inner // attn.heads, inner))
    pts.append(Point(tname, "transformer", block, index, r, None, None, getattr(tmod, "out_channels", None)))
    return pts


def _as_tuple(value) -> tuple:
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def _keep_where(pts: list, attribute: str, wanted, allowed) -> list:
    """The points whose `attribute` is one of `wanted` (a value or a tuple of them); None keeps all."""
    if wanted is None:
        return pts
    wanted = _as_tuple(wanted)
    bad = [w for w in wanted if w not in allowed]
    if bad:
        raise ValueError(f"unknown {attribute} {bad[0]!r}; {attribute}s: {', '.join(allowed)}")
    return [p for p in pts if getattr(p, attribute) in wanted]


def select(model, kind=None, block=None, resolution=None, pattern=None, image_size=None,
           vae_scale_factor: int | None = None) -> list[str]:
    """Full module paths of the points that match every filter given, in forward order.

        select(unet, kind="attn2")                                  # every cross-attention layer
        select(unet, kind=("attn1", "attn2"), block="up")
        select(unet, kind="attn2", resolution=16, image_size=512)   # the 16x16 cross-attention layers
        select(unet, pattern="up_blocks.1.*")                       # glob over full names
        select(unet, kind="projection", pattern="*.attn2.to_q")     # the queries of every cross-attention layer

    kind: one of or a tuple of 'attn1', 'attn2', 'block', 'projection', 'resnet', 'transformer' (UNets), 'joint',
    'image->text', 'text->image', 'image->image', 'text->text', 'block', 'text_block', 'projection' (DiTs); block:
    'down' | 'mid' | 'up' (UNets), 'double' | 'single' (Flux; SD3's blocks are 'double') or a tuple;
    resolution: a tuple (h, w), an int for square, or a list of those, e.g. [16, 32] (needs image_size); pattern: a
    glob or list of globs. A selection that matches nothing is an error that lists what is there.
    """
    pts = points(model, image_size, vae_scale_factor)
    pts = _keep_where(pts, "kind", kind, KINDS)
    pts = _keep_where(pts, "block", block, BLOCKS)
    if resolution is not None:
        if image_size is None:
            raise ValueError(f"resolution={resolution!r} needs image_size (pixels) to know each point's resolution")
        one = isinstance(resolution, int) or (isinstance(resolution, tuple) and len(resolution) == 2
                                              and all(isinstance(x, int) for x in resolution))
        wanted = [_as_hw(resolution)] if one else [_as_hw(r) for r in resolution]  # a list: several resolutions
        have = sorted({p.resolution for p in pts}, reverse=True)
        pts = [p for p in pts if p.resolution in wanted]
        if not pts:
            raise ValueError(f"no point at resolution {resolution!r} for image_size={image_size!r}; "
                             f"resolutions there: {', '.join(f'{h}x{w}' for h, w in have)}")
    if pattern is not None:
        globs = _as_tuple(pattern)
        pts = [p for p in pts if any(fnmatch.fnmatchcase(p.name, g) for g in globs)]
    if not pts:
        raise ValueError(f"no point matches kind={kind!r}, block={block!r}, pattern={pattern!r}; "
                         f"e.g. {', '.join(suggest(str(pattern or kind or ''), model_names(model)))}")
    return [p.name for p in pts]


def model_names(model) -> list[str]:
    return [p.name for p in points(model)]


def suggest(name: str, valid: list[str], n: int = 3) -> list[str]:
    """The nearest valid names to `name` (difflib), falling back to the first few valid ones."""
    near = difflib.get_close_matches(name, valid, n=n, cutoff=0.6)
    if not near:
        near = [v for v in valid if v.startswith(name.split(".")[0])][:n] or valid[:n]
    return near


def check_names(model, names) -> list[str]:
    """`names` as a list of full point names; an unknown one is a ValueError suggesting the nearest real ones."""
    if isinstance(names, str):
        names = [names]
    valid = model_names(model)
    known = set(valid)
    for name in names:
        if name not in known:
            raise ValueError(f"{name!r} is not a hook point of this {type(denoiser_of(model)).__name__}; nearest: "
                             f"{', '.join(suggest(name, valid))} (lab.hooks.points(model) lists them all)")
    return list(names)
