"""What a DAAM capture keeps at real size, predicted from UNets built from the real configs on the `meta` device (no
memory, no weights, seconds): the notebook explorer's capture fits SD1.5 at 512 px in 0.5 GiB and SDXL at 1024 px in
2 GiB, and keeping every head at every step is the 3.1 / 20.6 GiB measured on a GPU."""
import pytest
import torch
from diffusers import UNet2DConditionModel

from analyses import daam
from lab.hooks import Keep
from tiny_models import reduced_config

GiB = 2**30
PROMPT = "a small red hexagon to the left of a large blue trapezoid on a white background"  # the notebook's
STEPS = 25  # the notebook's at LAB_SIZE=default


@pytest.fixture(scope="module")
def unets():
    with torch.device("meta"):
        return {arch: UNet2DConditionModel(**reduced_config(arch, width_divisor=1)) for arch in ("sd15", "sdxl")}


@pytest.fixture(scope="module")
def prompt_keys(shapes_pipe):
    return list(range(len(shapes_pipe.tokenizer(PROMPT).input_ids)))  # tokens='prompt' of the notebook's prompt


def test_meta_unets_have_the_real_layout(unets):
    assert len(daam.daam_layers(unets["sd15"], mid=True)) == 16 and len(daam.daam_layers(unets["sdxl"], mid=True)) == 70
    assert unets["sdxl"].config.block_out_channels == (320, 640, 1280)


@pytest.mark.parametrize("arch, size, budget", [("sd15", 512, 0.5 * GiB), ("sdxl", 1024, 2 * GiB)])
def test_the_explorer_capture_fits(unets, prompt_keys, arch, size, budget):
    options = {**daam.explorer_options(STEPS), "tokens": prompt_keys}
    sizes = daam.capture_sizes(unets[arch], size, STEPS, **options)
    assert set(sizes) == {"cache", "slices", "heads", "queries"}
    assert sum(sizes.values()) <= budget, sizes


def test_every_head_at_every_step_is_what_was_refused_on_the_gpu(unets):
    every = Keep(steps="all", heads="all", branches=("cond", "uncond"))  # slices=True before the views
    assert round(daam.capture_bytes(unets["sd15"], 512, STEPS, keep=every) / GiB, 1) == 3.1
    assert round(daam.capture_bytes(unets["sdxl"], 1024, STEPS, keep=every) / GiB, 1) == 20.6


def test_float16_halves_the_every_step_views(unets):
    full = daam.capture_sizes(unets["sdxl"], 1024, STEPS, slices=True, head_steps=[3])
    half = daam.capture_sizes(unets["sdxl"], 1024, STEPS, slices=True, head_steps=[3], dtype=torch.bfloat16)
    assert half["slices"] * 2 == full["slices"] and half["heads"] * 2 == full["heads"]
    assert half["cache"] == full["cache"]  # the published maps stay a float32 sum


def test_prompt_tokens_need_a_prompt_or_positions(unets):
    with pytest.raises(ValueError, match="tokens='prompt' needs the prompt"):
        daam.capture_sizes(unets["sd15"], 512, STEPS, slices=True, tokens="prompt")
    with pytest.raises(ValueError, match="tokens='all'; give None"):
        daam.capture_sizes(unets["sd15"], 512, STEPS, slices=True, tokens="all")
