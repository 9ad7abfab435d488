"""Joint attention of diffusion transformers (SD3 / SD3.5, FLUX.1): its probabilities beside the layer's own
processor, and the eager math that lets an edit replace them.

    probs = beside(layer, attn, rows, n_text, rotary, {"image->text": True})   # {point: (b, heads or 1, q, k)}
    out = eager(layer, attn, hidden, context, mask, rotary, editor, observers, n_text)

What the processors compute (diffusers' JointAttnProcessor2_0 and FluxAttnProcessor, fused or not): image tokens
are projected by to_q / to_k, text tokens by add_q_proj / add_k_proj; each is split into heads and normalised by
norm_q / norm_k and norm_added_q / norm_added_k (RMSNorm, where the layer has them); the two are concatenated,
SD3 as [image, text], Flux as [text, image] (Flux's single-stream blocks get the concatenation as their input);
Flux rotates q and k by its rotary embedding (diffusers' own apply_rotary_emb); one softmax(q k^T / sqrt(d)) over
every key. Here the same steps run on the q and k the processor just made (caught by forward hooks), in float32,
only for the rows and the query side (image or text) some trace keeps, a few heads at a time.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit import split_name

# Processors whose math this module reproduces. Anything else (IP-Adapter, PAG, custom) is refused by name.
JOINT_EQUIVALENT = {"JointAttnProcessor2_0", "FusedJointAttnProcessor2_0", "FluxAttnProcessor"}
JOINT_PROJECTIONS = ("to_q", "to_k", "to_qkv", "add_q_proj", "add_k_proj", "to_added_qkv")
_CHUNK_ELEMENTS = 2**26  # float32 scores per chunk of heads (256 MiB)


def form(attn: nn.Module, context) -> str:
    """'sd3' ([image, text]), 'flux' ([text, image]), 'flux-single' (joint input, text first) or 'image' (SD3.5's
    attn2 and any call without text: image-only self-attention)."""
    flux = type(attn).__name__ == "FluxAttention"
    if context is not None:
        return "flux" if flux else "sd3"
    return "flux-single" if flux else "image"


def spans(shape: str, n_image: int, n_text: int) -> dict[str, slice]:
    """Positions of 'image' and 'text' tokens in the joint sequence of a layer of this `shape` (see form())."""
    if shape == "sd3":
        return {"image": slice(0, n_image), "text": slice(n_image, n_image + n_text)}
    if shape == "image":
        return {"image": slice(0, n_image), "text": slice(n_image, n_image)}
    return {"text": slice(0, n_text), "image": slice(n_text, n_text + n_image)}


def _split(attn, x: torch.Tensor) -> torch.Tensor:
    """(b, tokens, heads*d) -> (b, tokens, heads, d)."""
    return x.unflatten(-1, (attn.heads, -1))  # (b, s, heads, d)


def _norm(module, x: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x)


def _qk(attn, shape: str, q_img, k_img, q_txt, k_txt, rotary, v_img=None, v_txt=None):
    """The processor's q and k (and v, when given), (b, heads, S, d) in layer order, from the projections."""
    flux = shape.startswith("flux")
    q, k = _split(attn, q_img), _split(attn, k_img)  # (b, s, heads, d)
    if flux:  # FluxAttnProcessor normalises in (b, s, heads, d), SD3's processor in (b, heads, s, d): RMSNorm on d
        q, k = attn.norm_q(q), attn.norm_k(k)
    else:
        q = _norm(attn.norm_q, q.transpose(1, 2)).transpose(1, 2)
        k = _norm(attn.norm_k, k.transpose(1, 2)).transpose(1, 2)
    vs = None if v_img is None else [_split(attn, v_img)]
    if q_txt is not None:
        qt, kt = _split(attn, q_txt), _split(attn, k_txt)  # (b, t, heads, d)
        if flux:
            qt, kt = attn.norm_added_q(qt), attn.norm_added_k(kt)
        else:
            qt = _norm(getattr(attn, "norm_added_q", None), qt.transpose(1, 2)).transpose(1, 2)
            kt = _norm(getattr(attn, "norm_added_k", None), kt.transpose(1, 2)).transpose(1, 2)
        first = (qt, q) if flux else (q, qt)
        q, k = torch.cat(first, dim=1), torch.cat((kt, k) if flux else (k, kt), dim=1)  # (b, S, heads, d)
        if vs is not None:
            vt = _split(attn, v_txt)
            vs = [vt, vs[0]] if flux else [vs[0], vt]
    if rotary is not None and flux:
        from diffusers.models.embeddings import apply_rotary_emb

        q = apply_rotary_emb(q, rotary, sequence_dim=1)
        k = apply_rotary_emb(k, rotary, sequence_dim=1)
    v = None if vs is None else torch.cat(vs, dim=1).transpose(1, 2)  # (b, heads, S, d)
    return q.transpose(1, 2), k.transpose(1, 2), v  # (b, heads, S, d)


def caught_projections(caught: dict, name: str, processor: str):
    """(q_img, k_img, q_txt, k_txt) from the projection outputs a processor call made; text ones None if absent."""
    q, k = caught.get("to_q"), caught.get("to_k")
    if q is None and "to_qkv" in caught:
        q, k, _ = caught["to_qkv"].chunk(3, dim=-1)
    qt, kt = caught.get("add_q_proj"), caught.get("add_k_proj")
    if qt is None and "to_added_qkv" in caught:
        qt, kt, _ = caught["to_added_qkv"].chunk(3, dim=-1)
    if q is None or k is None:
        raise RuntimeError(f"{name!r}: its processor {processor} did not call to_q/to_k (or to_qkv), so the "
                           "probabilities cannot be computed beside it")
    return q, k, qt, kt


def beside(layer, attn, shape: str, rows, n_text: int | None, rotary, wanted: dict[str, bool]) -> dict:
    """Probabilities of the points `wanted` ({point name: heads averaged?}) of one joint layer, float32, from the
    q and k its processor just made: {name: (b, heads or 1, queries, keys)} for the batch rows `rows` (None: all)."""
    q_img, k_img, q_txt, k_txt = caught_projections(layer.caught, layer.name, type(layer.orig).__name__)
    if rows is not None:
        q_img, k_img = q_img.index_select(0, rows), k_img.index_select(0, rows)  # (b, tokens, inner)
        if q_txt is not None:
            q_txt, k_txt = q_txt.index_select(0, rows), k_txt.index_select(0, rows)
    q, k, _ = _qk(attn, shape, q_img, k_img, q_txt, k_txt, rotary)  # (b, heads, S, d)
    total = q.shape[2]
    n_text = 0 if shape == "image" else (q_txt.shape[1] if q_txt is not None else n_text)
    if n_text is None:
        raise RuntimeError(f"{layer.name!r}: the number of text tokens in its joint sequence is unknown")
    where = spans(shape, total - n_text, n_text)
    where["joint"] = slice(0, total)
    views = {}
    for name in wanted:
        view = split_name(name)[1] or ("image->image" if shape == "image" else "joint")
        qs, ks = (view, view) if view == "joint" else view.split("->")
        views[name] = (where[qs], where[ks])
    return _softmax_views(q, k, views, wanted)


def _softmax_views(q, k, views: dict, mean_only: dict) -> dict:
    """Each view's slice of softmax(q k^T / sqrt(d)) over every key; one softmax per distinct query span."""
    b, heads, _, d = q.shape
    scale = d ** -0.5
    out: dict = {}
    by_queries: dict = {}
    for name, (qs, ks) in views.items():
        by_queries.setdefault((qs.start, qs.stop), []).append((name, ks))
    for (start, stop), members in by_queries.items():
        n_q = stop - start
        step = max(1, min(heads, _CHUNK_ELEMENTS // max(b * n_q * k.shape[2], 1)))
        parts: dict = {name: [] for name, _ in members}
        for h in range(0, heads, step):
            scores = torch.matmul(q[:, h:h + step, start:stop].float(), k[:, h:h + step].float().transpose(-1, -2))
            p = (scores * scale).softmax(dim=-1)  # (b, chunk, n_q, keys)
            for name, ks in members:
                part = p[..., ks]  # (b, chunk, n_q, view keys)
                parts[name].append(part.sum(dim=1, keepdim=True) if mean_only[name] else part)
        for name, _ in members:
            if mean_only[name]:
                out[name] = torch.stack(parts[name]).sum(0).div_(heads)  # (b, 1, q, k)
            else:
                out[name] = parts[name][0] if len(parts[name]) == 1 else torch.cat(parts[name], dim=1)
    return out


def eager(layer, attn, hidden, context, mask, rotary, editor, observers, n_text: int | None):
    """The layer's processor math with the probabilities materialised: the editor may replace any of its points'
    slices (in the layer's own point order); every subscriber keeping a point at this step records it."""
    if mask is not None:
        raise NotImplementedError(f"{layer.name!r} got an attention mask; edits of masked joint attention are not "
                                  "supported")
    shape = form(attn, context)
    fused = getattr(attn, "fused_projections", False) or type(layer.orig).__name__.startswith("Fused")
    if fused:
        q_img, k_img, v_img = attn.to_qkv(hidden).chunk(3, dim=-1)  # (b, tokens, inner) each
    else:
        q_img, k_img, v_img = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    q_txt = k_txt = v_txt = None
    if context is not None:
        if fused:
            q_txt, k_txt, v_txt = attn.to_added_qkv(context).chunk(3, dim=-1)
        else:
            q_txt, k_txt, v_txt = attn.add_q_proj(context), attn.add_k_proj(context), attn.add_v_proj(context)
    q, k, v = _qk(attn, shape, q_img, k_img, q_txt, k_txt, rotary, v_img, v_txt)  # (b, heads, S, d)
    total = q.shape[2]
    n_txt = 0 if shape == "image" else (context.shape[1] if context is not None else n_text)
    where = spans(shape, total - n_txt, n_txt)
    where["joint"] = slice(0, total)
    probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)  # (b,h,S,S)

    def view_of(name):
        view = split_name(name)[1] or ("image->image" if shape == "image" else "joint")
        qs, ks = (view, view) if view == "joint" else view.split("->")
        return where[qs], where[ks]

    subs = (editor, *observers)
    own = {name: probs[:, :, view_of(name)[0], view_of(name)[1]].clone() for name in layer.points
           if any(s.keeps_now(name) and s.keeps_before_edits(name) for s in subs)}  # edits write into probs
    for name in layer.points:
        if editor.edits_now(name):
            qs, ks = view_of(name)
            new = editor.edit(name, probs[:, :, qs, ks])
            if new is not None:
                probs[:, :, qs, ks] = new.to(probs.dtype)
    layout, _ = editor.rows()
    for name in layer.points:
        qs, ks = view_of(name)
        for s in subs:
            if s.keeps_now(name):
                s.record(name, own[name] if s.keeps_before_edits(name) else probs[:, :, qs, ks], tuple(layout), False)
    out = torch.matmul(probs.to(v.dtype), v)  # (b, heads, S, d)
    out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # (b, S, heads*d)
    if shape in ("image", "flux-single"):
        if getattr(attn, "pre_only", False):
            return out  # Flux single-stream: the block projects it
        return attn.to_out[1](attn.to_out[0](out))
    img, txt = out[:, where["image"]], out[:, where["text"]]  # (b, I, inner), (b, T, inner)
    img = attn.to_out[1](attn.to_out[0](img.contiguous()))
    if shape == "flux" or not attn.context_pre_only:
        txt = attn.to_add_out(txt.contiguous())
    return img, txt
