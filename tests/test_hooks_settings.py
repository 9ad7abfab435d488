"""Users' pipeline settings keep working under a trace: observing stays bit-identical, and the maps are the same.

Attention slicing and user processors are covered in test_hooks_trace.py; model CPU offload needs an accelerator
and runs on the GPU lane (scripts/gpu_check.sh).
"""
import pytest
import torch

from devices import DEVICE, ON_GPU
from tiny_models import generate, one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import Keep, select, trace

DAAM = Keep(steps="sum", heads="mean", branches=("cond",))


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("sd15")


def _observed(pipe, **kw):
    names = select(pipe, kind="attn2")
    with trace(pipe, names, keep=DAAM) as tr:
        image = generate(pipe, **kw)
    return image, tr.cache


def test_channels_last_unet_is_traced_unchanged(pipe):
    plain_image, plain_maps = _observed(pipe)
    pipe.unet.to(memory_format=torch.channels_last)
    try:
        reference = generate(pipe)
        image, maps = _observed(pipe)
    finally:
        pipe.unet.to(memory_format=torch.contiguous_format)
    assert torch.equal(image, reference)
    for name in maps:
        torch.testing.assert_close(maps[name], plain_maps[name], atol=1e-6, rtol=1e-5)


def _small_pipeline():
    """A pipeline whose UNet has one cross-attention block each way: dynamo traces it in seconds."""
    from diffusers import UNet2DConditionModel

    pipe = tiny_pipeline("sd15")
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=8, cross_attention_dim=pipe.text_encoder.config.hidden_size, sample_size=8,
    ).eval().to(DEVICE)
    return pipe


def test_a_compiled_unet_is_traced_through_its_modules():
    pipe = _small_pipeline()
    pipe.unet = torch.compile(pipe.unet, backend="eager")  # dynamo's graph capture; inductor's kernels aside
    reference = generate(pipe)
    image, maps = _observed(pipe)
    assert torch.equal(image, reference)
    assert len(maps) == len(select(pipe, kind="attn2")) and all(t.abs().sum() > 0 for t in maps.values())
    assert torch.equal(generate(pipe), reference)  # the hooks are gone again


def test_an_sdxl_pipeline_with_a_float16_vae_upcast_is_traced():
    pipe = tiny_pipeline("sdxl")
    pipe.vae.register_to_config(force_upcast=True)
    pipe.vae.to(torch.float16)  # the pipeline upcasts it to float32 for decoding, as SDXL's fp16 VAE needs
    reference = generate(pipe, size=64)
    image, maps = _observed(pipe, size=64)
    assert torch.equal(image, reference) and len(maps) == len(select(pipe, kind="attn2"))


@pytest.mark.skipif(not ON_GPU, reason="model CPU offload moves the model to an accelerator at each call")
def test_model_cpu_offload_is_traced():
    pipe = tiny_pipeline("sd15").to("cpu")
    pipe.enable_model_cpu_offload(device=DEVICE)
    reference = generate(pipe)
    image, maps = _observed(pipe)
    assert torch.equal(image, reference)
    assert all(t.device.type == "cpu" for t in maps.values())
