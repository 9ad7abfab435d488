"""The capturing processor gives the same output as diffusers' own processors, with every Attention option."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from tiny_models import one_thread  # noqa: F401 (autouse fixture)

from lab.hooks import CaptureProcessor

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
    seen = []
    proc = CaptureProcessor(lambda name, probs: seen.append((name, probs.shape)), lambda name: True)
    holder = torch.nn.ModuleDict({"attn": attn})
    orig = attn.processor
    proc.install(holder, ["attn"])
    try:
        with torch.no_grad():
            got = attn(hidden, **kw)
    finally:
        proc.uninstall()
    assert attn.processor is orig
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    queries = hidden[0].numel() // CASES[case]["query_dim"]
    keys = kw["encoder_hidden_states"].shape[1] if "encoder_hidden_states" in kw else queries
    assert seen == [("attn", (2, CASES[case]["heads"], queries, keys))]  # (batch, heads, query, key)


def test_a_replacement_from_the_callback_is_used():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(1, 9, 16)
    uniform = torch.full((1, 2, 9, 9), 1 / 9)
    proc = CaptureProcessor(lambda name, probs: uniform, lambda name: True)
    proc.install(torch.nn.ModuleDict({"a": attn}), ["a"])
    with torch.no_grad():
        out = attn(hidden)
    proc.uninstall()
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
    proc = CaptureProcessor(lambda name, probs: pytest.fail("must not be called"), lambda name: False)
    proc.install(torch.nn.ModuleDict({"a": attn}), ["a"])
    with torch.no_grad():
        attn(torch.randn(1, 9, 16))
    proc.uninstall()
    assert calls == [1]
