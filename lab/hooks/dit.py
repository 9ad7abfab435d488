"""Hook points of diffusion transformers (SD3 / SD3.5 MMDiT, FLUX.1), by real module path, in forward order.

    pts = points(pipe, image_size=1024)                    # lab.hooks.points dispatches here for a DiT
    layout(pipe, image_size=1024)                          # TokenLayout(text=333, image=4096, grid=(64, 64), ...)
    select(pipe, kind="image->text")                       # 'transformer_blocks.0.attn:image->text', ...

A joint-attention layer computes ONE softmax over the keys of both streams, in the layer's order: SD3 puts the
image tokens first ([image, text]), Flux the text tokens first ([text, image]; its single-stream blocks run it on
the already concatenated sequence). Its points:

    transformer_blocks.3.attn                   kind 'joint'        the whole map, queries and keys in layer order
    transformer_blocks.3.attn:image->text       kind 'image->text'  image queries (h*w, row-major) x text keys
    transformer_blocks.3.attn:text->image       kind 'text->image'
    transformer_blocks.3.attn:image->image      kind 'image->image'
    transformer_blocks.3.attn:text->text        kind 'text->text'

A view is the slice of the joint softmax (rows of its queries, columns of its keys: rows do not sum to 1), kept
alone: memory and compute pay only for the query side asked for. SD3.5's dual-attention ``attn2`` is image-only
self-attention: one point, kind 'image->image', its plain path. Blocks: ``transformer_blocks.i`` (kind 'block') is
the block's image-stream output as (channel, h, w); ``transformer_blocks.i:text`` (kind 'text_block') its text
stream (token, channel), absent for SD3's last block, which drops the text. Projections (to_q, add_k_proj, ...,
kind 'projection') have a ``tokens`` of 'image', 'text' or 'joint'.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

VIEWS = ("image->text", "text->image", "image->image", "text->text")
JOINT_KINDS = ("joint", *VIEWS)
DIT_CLASSES = ("SD3Transformer2DModel", "FluxTransformer2DModel")
_DUAL = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
_TOKENS = {"to_q": "image", "to_k": "image", "to_v": "image", "to_out.0": "image", "add_q_proj": "text",
           "add_k_proj": "text", "add_v_proj": "text", "to_add_out": "text"}


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of a DiT at one image size: ``TokenLayout(text=333, image=4096, grid=(64, 64),
    order=('image', 'text'), patch=16)`` (patch: image pixels per token side)."""

    text: int | None
    image: int | None
    grid: tuple[int, int] | None
    order: tuple[str, str]
    patch: int

    def span(self, side: str) -> slice:
        """Token positions of 'image' or 'text' in the joint sequence (layer order)."""
        first = self.order[0]
        n_first = self.text if first == "text" else self.image
        return slice(0, n_first) if side == first else slice(n_first, None)


def family(model: nn.Module) -> str:
    """'unet', 'sd3' or 'flux' for a denoiser."""
    name = type(model).__name__
    return {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}.get(name, "unet")


def default_text_tokens(model: nn.Module, pipe=None) -> int:
    """Text keys at the pipelines' defaults: SD3 77 CLIP + 256 T5, Flux 512 T5."""
    clip = getattr(pipe, "tokenizer_max_length", 77) if pipe is not None else 77
    return clip + 256 if family(model) == "sd3" else 512


def layout(model, image_size=None, vae_scale_factor: int | None = None, text_tokens: int | None = None
           ) -> TokenLayout:
    """The token layout of a DiT (or a DiT pipeline) for an image of `image_size` pixels (int or (h, w)).

        layout(pipe, 1024)      # SD3: TokenLayout(text=333, image=4096, grid=(64, 64), order=('image', 'text'))

    text_tokens: the text keys (SD3: 77 + max_sequence_length, Flux: max_sequence_length); by default the
    pipelines' defaults. image tokens: SD3 patches the latent (image / 8) by patch_size 2; Flux packs 2x2 latents.
    """
    from .points import _as_hw, denoiser_of

    dit = denoiser_of(model)
    fam = family(dit)
    if fam == "unet":
        raise ValueError(f"{type(dit).__name__} is not a diffusion transformer; layout() is for "
                         f"{', '.join(DIT_CLASSES)}")
    vsf = vae_scale_factor or getattr(model, "vae_scale_factor", None) or 8
    patch = vsf * (dit.config.patch_size if fam == "sd3" else 2)
    if text_tokens is None:
        text_tokens = default_text_tokens(dit, model if model is not dit else None)
    grid = None
    if image_size is not None:
        h, w = _as_hw(image_size)
        grid = (h // patch, w // patch)
    order = ("image", "text") if fam == "sd3" else ("text", "image")
    return TokenLayout(text_tokens, grid[0] * grid[1] if grid else None, grid, order, patch)


def dit_points(dit: nn.Module, grid, text_tokens: int | None) -> list:
    """Every point of an SD3 or Flux transformer, forward order; see the module docstring."""
    from .points import Point

    out: list = []
    blocks = [("double", i, f"transformer_blocks.{i}", b) for i, b in enumerate(dit.transformer_blocks)]
    blocks += [("single", i, f"single_transformer_blocks.{i}", b)
               for i, b in enumerate(getattr(dit, "single_transformer_blocks", None) or [])]
    for block, index, bname, bmod in blocks:
        attn = bmod.attn
        heads, head_dim = attn.heads, _inner(attn) // attn.heads
        aname = f"{bname}.attn"

        def point(name, kind, channels=None, tokens=None, h=heads, d=head_dim):
            return Point(name, kind, block, index, grid, h, d, channels, text_tokens, tokens)

        modules = dict(attn.named_modules())
        projections = [p for p in (*_DUAL, "to_add_out", "to_out.0") if isinstance(modules.get(p), nn.Linear)]
        if family(dit) == "flux":  # FluxAttnProcessor runs to_out before to_add_out
            projections = [p for p in (*_DUAL, "to_out.0", "to_add_out") if p in projections]
        for proj in projections:
            tokens = "joint" if block == "single" else _TOKENS[proj]
            out.append(point(f"{aname}.{proj}", "projection", modules[proj].out_features, tokens))
        out.append(point(aname, "joint", _inner(attn)))
        out += [point(f"{aname}:{view}", view, _inner(attn)) for view in VIEWS]
        attn2 = getattr(bmod, "attn2", None)
        if attn2 is not None:  # SD3.5 dual attention: image-only self-attention after the joint one
            out.append(point(f"{bname}.attn2", "image->image", _inner(attn2), h=attn2.heads,
                             d=_inner(attn2) // attn2.heads))
        width = getattr(dit, "inner_dim", None)
        out.append(point(bname, "block", width, "image", None, None))
        if not getattr(bmod, "context_pre_only", False):
            out.append(point(f"{bname}:text", "text_block", width, "text", None, None))
    return out


def _inner(attn: nn.Module) -> int:
    return attn.to_q.out_features


def split_name(name: str) -> tuple[str, str | None]:
    """'transformer_blocks.0.attn:image->text' -> ('transformer_blocks.0.attn', 'image->text'); no suffix -> None."""
    module, _, suffix = name.partition(":")
    return module, suffix or None


def query_key_counts(kind: str, grid: tuple[int, int], text: int | None) -> tuple[int, int]:
    """(queries, keys) of an attention point of `kind` with an image grid and `text` text tokens."""
    image = grid[0] * grid[1]
    n = {"image": image, "text": text}
    if kind == "attn1":
        return image, image
    if kind == "attn2":
        return image, text
    if kind == "joint":
        return image + text, image + text
    q, k = kind.split("->")
    return n[q], n[k]


def inputs(fam: str, args: tuple, kwargs: dict):
    """(sample, timestep, text context) of a call to a denoiser of family `fam` (see family()), as it got them."""
    def get(i, name):
        return args[i] if len(args) > i else kwargs.get(name)

    if fam == "unet":
        return get(0, "sample"), get(1, "timestep"), get(2, "encoder_hidden_states")
    return get(0, "hidden_states"), get(3, "timestep"), get(1, "encoder_hidden_states")


def grid_of(model: nn.Module, sample, args: tuple, kwargs: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image token grid, VAE latent size) of a DiT call. SD3: the latent (B, c, H, W) patched by patch_size;
    Flux: packed tokens whose positions are img_ids (read once, at the first step: it waits for the device)."""
    if family(model) == "sd3":
        p = model.config.patch_size
        h, w = sample.shape[-2:]
        return (h // p, w // p), (h, w)
    ids = args[4] if len(args) > 4 else kwargs.get("img_ids")
    if ids is None:
        raise ValueError("a FluxTransformer2DModel call without img_ids: the image grid is unknown")
    ids = ids[0] if ids.ndim == 3 else ids  # (tokens, 3): (0, row, column)
    gh, gw = (int(v) + 1 for v in ids[:, 1:].amax(0).tolist())
    if gh * gw != sample.shape[1]:
        raise ValueError(f"img_ids span a {gh}x{gw} grid but the call has {sample.shape[1]} image tokens")
    return (gh, gw), (2 * gh, 2 * gw)
