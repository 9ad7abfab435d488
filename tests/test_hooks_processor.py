"""The capturing processor gives the same output as diffusers' own processors, with every Attention option."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from tiny_models import one_thread  # noqa: F401 (autouse fixture)

from lab.hooks.processor import CaptureProcessor


class Subscriber:
    """What a trace tells the processor, for one lone layer: keep (and optionally edit) every call, batch 'cond'."""

    def __init__(self, replace=None, keep=True, edit=False):
        self.replace, self.keep, self.editing = replace, keep, edit or replace is not None
        self.edits = {"attn"} if self.editing else set()
        self.kept_branches = ["cond"]
        self.seen = []

    def rows(self):
        return ("cond",), 1

    def edits_now(self, name):
        return self.editing

    def keeps_now(self, name):
        return self.keep

    def keeps_head_mean(self, name):
        return False

    def keeps_before_edits(self, name):
        return False

    def edit(self, name, probs):
        return self.replace

    def record(self, name, probs, have, heads_averaged):
        self.seen.append((name, tuple(probs.shape), probs))


def _run(attn, sub, *args, **kw):
    proc = CaptureProcessor()
    proc.subscribe(sub, torch.nn.ModuleDict({"attn": attn}), ["attn"], sub.edits)
    try:
        with torch.no_grad():
            return attn(*args, **kw)
    finally:
        proc.unsubscribe(sub)

CASES = {
    "self": dict(query_dim=16, heads=2, dim_head=8),
    "cross+upcast": dict(query_dim=16, cross_attention_dim=12, heads=4, dim_head=4, upcast_attention=True,
                         upcast_softmax=True),
    "cross+norm_cross": dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8,
                             cross_attention_norm="layer_norm"),
    "group_norm+residual+rescale": dict(query_dim=16, heads=2, dim_head=8, norm_num_groups=4,
                                        residual_connection=True, rescale_output_factor=2.0, bias=True),
    "spatial_norm": dict(query_dim=32, heads=2, dim_head=8, spatial_norm_dim=6, residual_connection=True),
}


def _inputs(case):
    torch.manual_seed(1)
    spatial = "group_norm" in case or "spatial" in case
    width = CASES[case]["query_dim"]
    hidden = torch.randn(2, width, 4, 4) if spatial else torch.randn(2, 9, width)  # (b, c, h, w) or (b, q, c)
    kw = {}
    if "cross" in case:
        kw["encoder_hidden_states"] = torch.randn(2, 5, 12)
    if "spatial" in case:
        kw["temb"] = torch.randn(2, 6, 2, 2)  # SpatialNorm's zq
    return hidden, kw


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("original", [AttnProcessor, AttnProcessor2_0])
def test_capture_output_equals_the_original_processor(case, original):
    torch.manual_seed(0)
    attn = Attention(**CASES[case]).eval()
    attn.set_processor(original())
    hidden, kw = _inputs(case)
    with torch.no_grad():
        want = attn(hidden, **kw)
    orig = attn.processor
    observer, editor = Subscriber(), Subscriber(edit=True)  # the editor returns None: the eager math, unchanged
    observed = _run(attn, observer, hidden, **kw)
    eager = _run(attn, editor, hidden, **kw)
    assert attn.processor is orig and not attn.to_q._forward_hooks
    assert torch.equal(observed, want)  # observing runs the layer's own processor
    assert torch.allclose(eager, want, atol=1e-6), (eager - want).abs().max()
    queries = hidden[0].numel() // CASES[case]["query_dim"]
    keys = kw["encoder_hidden_states"].shape[1] if "encoder_hidden_states" in kw else queries
    shape = (2, CASES[case]["heads"], queries, keys)  # (batch, heads, query, key)
    assert [s[:2] for s in observer.seen] == [("attn", shape)] == [s[:2] for s in editor.seen]
    torch.testing.assert_close(observer.seen[0][2], editor.seen[0][2].float(), atol=1e-6, rtol=1e-5)


def test_a_replacement_from_the_callback_is_used():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(1, 9, 16)
    uniform = torch.full((1, 2, 9, 9), 1 / 9)
    out = _run(attn, Subscriber(replace=uniform), hidden)
    values = attn.to_v(hidden).mean(1, keepdim=True)  # uniform attention: every query gets the mean value
    assert torch.allclose(out, attn.to_out[0](values).expand_as(out), atol=1e-6)


def test_steps_not_wanted_use_the_original_processor(monkeypatch):
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    attn.set_processor(AttnProcessor2_0())
    calls, call = [], AttnProcessor2_0.__call__

    def spy(self, *args, **kwargs):
        calls.append(1)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(AttnProcessor2_0, "__call__", spy)
    sub = Subscriber(keep=False)
    _run(attn, sub, torch.randn(1, 9, 16))
    assert calls == [1] and sub.seen == []
