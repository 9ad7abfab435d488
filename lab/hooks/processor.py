"""The one capturing attention processor: the layer's own output, with its attention probabilities beside it.

    proc = processor_of(unet)                         # one per UNet, shared by every trace on it
    proc.subscribe(trace, ["mid_block.attentions.0.transformer_blocks.0.attn2"])
    ...                                               # run the model
    proc.unsubscribe(trace)                           # the last one out puts every original processor back

diffusers' default processor (AttnProcessor2_0, scaled_dot_product_attention) never materialises the attention
probabilities. A layer that is only observed at a step still runs its own processor (SDPA, flash, sliced, whatever
the user set), so its output is bit-identical to an untraced call; the probabilities are computed beside it from the
very q and k that processor made (caught by forward hooks on ``to_q`` / ``to_k``, or the fused ``to_qkv`` /
``to_kv``), in float32, only for the batch rows some trace keeps. A layer that is edited at a step runs the eager
math of diffusers' ``AttnProcessor`` instead (group_norm, spatial_norm, residual_connection, rescale_output_factor,
norm_cross, upcast included), so the edit can replace the probabilities; its output may differ, as it must.

The joint attention of diffusion transformers (SD3, SD3.5, Flux) goes the same way through lab.hooks.joint: one
layer, several points (the whole map and its four views, ``<path>:image->text`` ...), each computed only when kept.

Subscribers are traces (``lab.hooks.trace.Trace``). Several may observe one layer (each keeping its own view); at most
one may edit it. A subscriber answers ``edits_now(name)``, ``keeps_now(name)``, ``rows()`` -> (layout, batch),
``kept_branches``, ``keeps_head_mean(name)``, ``keeps_before_edits(name)`` (the layer's own probabilities rather
than the editor's replacement), ``text_tokens()`` (a DiT's text keys), ``edit(name, probs)`` and
``record(name, probs, branches)``; `name` is a point name (a module path, with a view suffix for joint attention).
"""
from __future__ import annotations

import inspect
import weakref

import torch
from torch import nn

from . import joint
from .dit import family, split_name

# Original processors whose math (softmax(q k^T * scale) v) the eager path reproduces up to float rounding; others
# (IP-Adapter, custom ones) compute something else, so probabilities computed beside them would be wrong.
EQUIVALENT = {
    "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor", "AttnProcessorNPU",
    "FusedAttnProcessor2_0", "AttnProcessor2_0_XLA", "XLAFlashAttnProcessor2_0",
}
_PROJECTIONS = ("to_q", "to_k", "to_qkv", "to_kv", "add_q_proj", "add_k_proj", "to_added_qkv")
_PROCESSORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # UNet -> its CaptureProcessor


def processor_of(unet: nn.Module) -> "CaptureProcessor":
    """The CaptureProcessor of `unet`, made on first use; every trace on that UNet shares it."""
    if unet not in _PROCESSORS:
        _PROCESSORS[unet] = CaptureProcessor()
    return _PROCESSORS[unet]


class _Layer:
    """One attention layer under capture: its original processor, subscribers, and the q/k its projections made."""

    def __init__(self, name: str, attn: nn.Module, dit: bool):
        self.name, self.attn, self.orig, self.dit = name, attn, attn.processor, dit
        self.points: list[str] = []  # the point names subscribed on this layer (a DiT's views), in model order
        self.by_sub: dict[int, list[str]] = {}  # id(subscriber) -> its point names on this layer
        params = inspect.signature(self.orig.__call__).parameters
        self.accepted = None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else set(params)
        self.subs: list = []
        self.armed = False
        self.caught: dict[str, torch.Tensor] = {}
        self.handles = [getattr(attn, p).register_forward_hook(self._catch(p))
                        for p in _PROJECTIONS if isinstance(getattr(attn, p, None), nn.Module)]

    def _catch(self, projection: str):
        def hook(module, args, output):
            if self.armed:
                self.caught[projection] = output.detach()  # (b, tokens, width)

        return hook

    def call_original(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        extra = {"temb": temb, **kwargs} if temb is not None else dict(kwargs)
        if self.accepted is not None:
            extra = {k: v for k, v in extra.items() if k in self.accepted}
        return self.orig(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **extra)

    def q_and_k(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The query and key projections (b, tokens, heads*d) the original processor just computed."""
        c, attn = self.caught, self.attn
        q = c.get("to_q")
        k = c.get("to_k")
        if q is None and "to_qkv" in c:
            q, k, _ = c["to_qkv"].chunk(3, dim=-1)
        if k is None and "to_kv" in c:
            k, _ = c["to_kv"].chunk(2, dim=-1)
        if q is None or k is None:
            raise RuntimeError(f"{self.name!r}: its processor {type(attn.processor).__name__} did not call to_q/to_k "
                               "(or to_qkv/to_kv), so the probabilities cannot be computed beside it")
        return q, k


class CaptureProcessor:
    """Attention processor that shows (or lets one subscriber replace) the probabilities (batch, heads, query, key).

    Build it with ``processor_of(unet)``; traces subscribe to the layers they capture or edit.
    """

    def __init__(self):
        self._layers: dict[int, _Layer] = {}

    def subscribe(self, sub, model: nn.Module, names: list[str], edited: set[str]) -> None:
        """Capture `names` (point names) for `sub`; `edited` are those it edits (one editor per layer)."""
        modules = dict(model.named_modules())
        dit = family(model) != "unet"
        allowed = joint.JOINT_EQUIVALENT if dit else EQUIVALENT
        for name in names:
            path = split_name(name)[0]
            attn = modules[path]
            layer = self._layers.get(id(attn))
            if layer is None:
                kind = type(attn.processor).__name__
                if kind not in allowed:
                    raise ValueError(
                        f"{path!r} uses {kind}, whose math the capture processor does not reproduce, so its "
                        f"probabilities cannot be captured or edited; processors it can stand beside: "
                        f"{', '.join(sorted(allowed))}")
            elif _edits(edited, path) and any(_edits(s.edits, path) for s in layer.subs):
                raise RuntimeError(f"{path!r} is already edited by an enclosing trace; one trace at a time may edit "
                                   "an attention layer (put both edits in one function)")
        for name in names:
            path = split_name(name)[0]
            attn = modules[path]
            if id(attn) not in self._layers:
                self._layers[id(attn)] = _Layer(path, attn, dit)
                attn.set_processor(self)
            layer = self._layers[id(attn)]
            if sub not in layer.subs:
                layer.subs.append(sub)
            layer.by_sub.setdefault(id(sub), []).append(name)
            layer.points = _union(layer.by_sub.values())

    def unsubscribe(self, sub) -> None:
        """Forget `sub`; a layer nobody captures any more gets its original processor object back."""
        for key, layer in list(self._layers.items()):
            layer.subs = [s for s in layer.subs if s is not sub]
            layer.by_sub.pop(id(sub), None)
            layer.points = _union(layer.by_sub.values())
            if not layer.subs:
                for h in layer.handles:
                    h.remove()
                if layer.attn.processor is self:
                    layer.attn.set_processor(layer.orig)
                del self._layers[key]

    def original(self, attn: nn.Module):
        """The processor `attn` had before any trace (itself when it is not under capture)."""
        layer = self._layers.get(id(attn))
        return attn.processor if layer is None else layer.orig

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        layer = self._layers[id(attn)]
        if layer.dit:
            return self._joint(layer, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        name = layer.name
        editor = next((s for s in layer.subs if s.edits_now(name)), None)
        observers = [s for s in layer.subs if s is not editor and s.keeps_now(name)]
        if editor is not None:
            return self._eager(layer, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                               editor, observers)
        if not observers:
            return layer.call_original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        layer.caught.clear()
        layer.armed = True
        try:
            out = layer.call_original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        finally:
            layer.armed = False
        q, k = layer.q_and_k()  # (B, q, heads*d), (B, k, heads*d)
        layer.caught.clear()
        layout, batch = observers[0].rows()
        wanted = [b for b in layout if any(b in s.kept_branches for s in observers)]
        at = [layout.index(b) for b in wanted]
        if at == list(range(at[0], at[0] + len(at))) and len(at) < len(layout):  # contiguous: sliced without a copy
            q, k = q[at[0] * batch:(at[-1] + 1) * batch], k[at[0] * batch:(at[-1] + 1) * batch]  # (kept rows, ...)
        elif len(at) < len(layout):  # e.g. uncond and perturbed of (uncond, cond, perturbed)
            rows = torch.cat([torch.arange(i * batch, (i + 1) * batch) for i in at]).to(q.device)
            q, k = q[rows], k[rows]  # (kept rows, ...)
        mean_only = all(s.keeps_head_mean(name) for s in observers)
        probs = _probabilities(attn, q, k, attention_mask, mean_only)  # (b, heads or 1, q, k) float32
        for s in observers:
            s.record(name, probs, tuple(wanted), mean_only)
        return out

    def _joint(self, layer, attn, hidden, context, mask, rotary, kwargs):
        """A DiT attention layer: its own processor, with the kept points' probabilities beside it (lab.hooks.joint);
        an edited layer runs the eager joint math instead."""
        rotary = kwargs.pop("image_rotary_emb", rotary)  # FluxAttention passes it 5th, where temb sits here
        editor = next((s for s in layer.subs if any(s.edits_now(p) for p in layer.points)), None)
        others = [s for s in layer.subs if s is not editor]
        if editor is not None:
            observers = [s for s in others if any(s.keeps_now(p) for p in layer.points)]
            n_text = editor.text_tokens()
            return joint.eager(layer, attn, hidden, context, mask, rotary, editor, observers, n_text)
        wanted = {p: [s for s in others if s.keeps_now(p)] for p in layer.points}
        wanted = {p: subs for p, subs in wanted.items() if subs}

        def original():
            if type(attn).__name__ == "FluxAttention":
                return layer.orig(attn, hidden, context, mask, rotary, **kwargs)
            return layer.orig(attn, hidden, encoder_hidden_states=context, attention_mask=mask, **kwargs)

        if not wanted:
            return original()
        if mask is not None:
            raise NotImplementedError(f"{layer.name!r} got an attention mask; the lab does not reproduce masked "
                                      "joint attention, so it cannot capture it")
        layer.caught.clear()
        layer.armed = True
        try:
            out = original()
        finally:
            layer.armed = False
        observers = [s for subs in wanted.values() for s in subs]
        layout, batch = observers[0].rows()
        kept = [b for b in layout if any(b in s.kept_branches for s in observers)]
        rows = None
        if kept != list(layout):
            rows = torch.cat([torch.arange(layout.index(b) * batch, (layout.index(b) + 1) * batch) for b in kept])
            rows = rows.to(hidden.device)
        mean_only = {p: all(s.keeps_head_mean(p) for s in subs) for p, subs in wanted.items()}
        probs = joint.beside(layer, attn, joint.form(attn, context), rows, observers[0].text_tokens(), rotary,
                             mean_only)  # {point: (b, heads or 1, q, k)} float32
        layer.caught.clear()
        for p, subs in wanted.items():
            for s in subs:
                s.record(p, probs[p], tuple(kept), mean_only[p])
        return out

    def _eager(self, layer, attn, hidden_states, encoder_hidden_states, attention_mask, temb, editor, observers):
        """diffusers' AttnProcessor math, with the editor's replacement of the probabilities; observers see it."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)  # (b, hw, c)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (b, q, heads*d)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # (b, k, heads*d)
        value = attn.to_v(encoder_hidden_states)  # (b, k, heads*d)

        query = attn.head_to_batch_dim(query)  # (b*heads, q, d)
        key = attn.head_to_batch_dim(key)  # (b*heads, k, d)
        value = attn.head_to_batch_dim(value)  # (b*heads, k, d)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        probs = attn.get_attention_scores(query, key, attention_mask)  # (b*heads, q, k)
        bh, q, k = probs.shape
        probs4 = own = probs.view(bh // attn.heads, attn.heads, q, k)  # (b, heads, q, k)
        new = editor.edit(layer.name, probs4)  # a replacement; the edit leaves its input as it was
        if new is not None:
            probs4 = new
            probs = new.reshape(bh, q, k).to(value.dtype)
        layout, _ = editor.rows()
        for s in (editor, *observers):
            if s.keeps_now(layer.name):
                s.record(layer.name, own if s.keeps_before_edits(layer.name) else probs4, tuple(layout), False)
        hidden_states = torch.bmm(probs, value)  # (b*heads, q, d)
        hidden_states = attn.batch_to_head_dim(hidden_states)  # (b, q, heads*d)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _edits(names, path: str) -> bool:
    """Whether any of the point names `names` is on the attention layer `path`."""
    return any(split_name(n)[0] == path for n in names)


def _union(lists) -> list[str]:
    """The point names of every subscriber of a layer, each once: the joint map first, then the views in order."""
    from .dit import JOINT_KINDS

    names = list(dict.fromkeys(n for names in lists for n in names))
    rank = {k: i for i, k in enumerate(JOINT_KINDS)}
    return sorted(names, key=lambda n: rank.get(split_name(n)[1] or "joint", 0))


# Above this many float32 elements (batch * heads * queries * keys, 256 MiB) the probabilities are computed a few
# heads at a time when only their mean is kept, so a real-size self-attention (4096 x 4096 keys) stays affordable.
_CHUNK_ELEMENTS = 2**26


def _probabilities(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, attention_mask, mean_only: bool) -> torch.Tensor:
    """softmax(q k^T * scale) in float32 from projections (b, tokens, heads*d): (b, heads, q, k), or (b, 1, q, k)
    holding the mean over heads when `mean_only`."""
    b, n_q, inner = q.shape
    heads = attn.heads
    d = inner // heads
    q = q.view(b, n_q, heads, d).transpose(1, 2)  # (b, heads, q, d)
    k = k.view(b, k.shape[1], heads, k.shape[-1] // heads).transpose(1, 2)  # (b, heads, k, d)
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], b).view(b, heads, -1, k.shape[2]).float()
    per_head = n_q * k.shape[2] * b
    step = heads if not mean_only else max(1, min(heads, _CHUNK_ELEMENTS // max(per_head, 1)))
    total = None
    parts = []
    for h in range(0, heads, step):
        scores = torch.matmul(q[:, h:h + step].float(), k[:, h:h + step].float().transpose(-1, -2))  # (b, h, q, k)
        scores = scores * attn.scale
        if mask is not None:
            scores = scores + mask[:, h:h + step]
        p = scores.softmax(dim=-1)
        if mean_only:
            p = p.sum(dim=1, keepdim=True)  # (b, 1, q, k)
            total = p if total is None else total.add_(p)
        else:
            parts.append(p)
    if mean_only:
        return total.div_(heads)  # (b, 1, q, k)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (b, heads, q, k)
