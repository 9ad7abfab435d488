"""The one capturing attention processor: diffusers' AttnProcessor math, with the probabilities handed to a callback.

    proc = CaptureProcessor(on_probs, wants)         # on_probs(name, probs) -> None | replacement; wants(name) -> bool
    originals = proc.install(unet, ["mid_block.attentions.0.transformer_blocks.0.attn2"])
    ...                                              # run the model
    proc.uninstall()                                 # every layer gets back its own processor object

diffusers' default processor (AttnProcessor2_0, scaled_dot_product_attention) never materialises the attention
probabilities, so on the chosen layers this processor computes them with ``attn.get_attention_scores``, exactly as
``AttnProcessor`` does (group_norm, spatial_norm, residual_connection, rescale_output_factor, norm_cross, upcast
included). When ``wants(name)`` is False (a step that is neither kept nor edited) it calls the layer's original
processor instead, so those steps cost and compute exactly what they would without a trace.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

# Original processors whose output the eager math below reproduces (up to float rounding); others would change it.
EQUIVALENT = {
    "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor", "AttnProcessorNPU",
    "FusedAttnProcessor2_0", "AttnProcessor2_0_XLA", "XLAFlashAttnProcessor2_0",
}


class CaptureProcessor:
    """Attention processor that materialises probabilities (batch, heads, query, key) for a callback to see or replace.

        proc = CaptureProcessor(lambda name, p: print(name, p.shape), lambda name: True)
        proc.install(unet, names); unet(sample, t, text); proc.uninstall()
    """

    def __init__(self, on_probs: Callable[[str, torch.Tensor], torch.Tensor | None], wants: Callable[[str], bool]):
        self.on_probs = on_probs
        self.wants = wants
        self._layers: dict[int, tuple[str, nn.Module, object, set[str] | None]] = {}

    def install(self, unet: nn.Module, names: list[str]) -> None:
        """Put this processor on the attention modules `names` (full paths), remembering each original processor."""
        modules = dict(unet.named_modules())
        for name in names:
            attn = modules[name]
            orig = attn.processor
            kind = type(orig).__name__
            if kind not in EQUIVALENT:
                raise ValueError(
                    f"{name!r} uses {kind}, whose math the capture processor does not reproduce, so capturing it would "
                    f"change the output; processors it can stand in for: {', '.join(sorted(EQUIVALENT))}"
                )
            params = inspect.signature(orig.__call__).parameters
            takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
            self._layers[id(attn)] = (name, attn, orig, None if takes_any else set(params))
        for _, attn, _, _ in self._layers.values():
            attn.set_processor(self)

    def uninstall(self) -> None:
        """Give every layer back its original processor object (identity, not a copy). Safe to call twice."""
        for _, attn, orig, _ in self._layers.values():
            if attn.processor is self:
                attn.set_processor(orig)
        self._layers.clear()

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        name, _, orig, accepted = self._layers[id(attn)]
        if not self.wants(name):
            extra = {"temb": temb, **kwargs} if temb is not None else dict(kwargs)
            if accepted is not None:
                extra = {k: v for k, v in extra.items() if k in accepted}
            return orig(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask, **extra)

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
        new = self.on_probs(name, probs.view(bh // attn.heads, attn.heads, q, k))  # sees (b, heads, q, k)
        if new is not None:
            probs = new.reshape(bh, q, k).to(value.dtype)
        hidden_states = torch.bmm(probs, value)  # (b*heads, q, d)
        hidden_states = attn.batch_to_head_dim(hidden_states)  # (b, q, heads*d)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
