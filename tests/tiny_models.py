"""Tiny Stable Diffusion 1.5 / 2.1 / SDXL models built from their real configurations, for fast CPU tests.

    from tiny_models import tiny_unet, tiny_pipeline
    unet = tiny_unet("sd15")                      # SD1.5 layout, 1/10 of the width
    pipe = tiny_pipeline("sdxl")                  # StableDiffusionXLPipeline, on devices.DEVICE (CUDA when visible)
    image = pipe("a red square", height=64, width=64, num_inference_steps=2, output_type="pt").images

The UNet configurations below are the real ``unet/config.json`` of each model with only the widths reduced
(block_out_channels divided by 8 to 32, heads kept, so the head *layout* is the real one and head_dim shrinks),
the text widths reduced and SDXL's ten transformer layers cut to two. Everything is random-weighted.
"""
from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from devices import DEVICE

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so `lab` imports however pytest is started
    sys.path.insert(0, str(REPO))

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run tiny models on one thread: on a busy 2-core machine two OpenMP threads are up to 100x slower for them.

    Import it into a test module (``from tiny_models import one_thread``) to apply it there; it restores the count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the real configurations, as published in each model's unet/config.json ---------------------------------------
SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD21_UNET = dict(
    SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, dual_cross_attention=False,
    sample_size=96, use_linear_projection=True, upcast_attention=True,
)
SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280), center_input_sample=False,
    cross_attention_dim=2048, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=(1, 2, 10),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
)
REAL = {"sd15": SD15_UNET, "sd21": SD21_UNET, "sdxl": SDXL_UNET}

TEXT_WIDTH = 32  # hidden size of each tiny CLIP text encoder (SDXL concatenates two of them)


def reduced_config(arch: str, width_divisor: int = 10) -> dict:
    """The real UNet config of `arch` ('sd15' | 'sd21' | 'sdxl') at 1/width_divisor of its channel width."""
    if arch not in REAL:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(REAL)}")
    cfg = dict(REAL[arch])
    if width_divisor == 1:
        return cfg  # the real UNet (SD1.5 / 2.1: 860-866M parameters, SDXL: 2.6B), for benchmarks on a GPU or on `meta`
    if arch == "sd15":
        width_divisor = max(width_divisor, 10)  # 8 heads of head_dim 4 at 32 channels
    else:
        width_divisor = 8  # 5/10/20 heads need channels 40/80/160: head_dim 8
    cfg["block_out_channels"] = tuple(c // width_divisor for c in cfg["block_out_channels"])
    cfg["norm_num_groups"] = 8
    cfg["sample_size"] = 8
    if arch == "sdxl":
        cfg["transformer_layers_per_block"] = (1, 2, 2)
        cfg["cross_attention_dim"] = 2 * TEXT_WIDTH  # two text encoders, concatenated
        cfg["addition_time_embed_dim"] = 8
        cfg["addition_embed_type_num_heads"] = 4
        cfg["projection_class_embeddings_input_dim"] = TEXT_WIDTH + 6 * 8  # pooled text + 6 time ids
    else:
        cfg["cross_attention_dim"] = TEXT_WIDTH
    return cfg


def tiny_unet(arch: str = "sd15", seed: int = 0, width_divisor: int = 10):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**reduced_config(arch, width_divisor)).eval()


def tokenizer_dir() -> Path:
    """lab/models/shapes/tokenizer when the built-in model ships it, else /tmp/tok, else a byte-level one made here."""
    for folder in (REPO / "lab/models/shapes/tokenizer", Path("/tmp/tok")):
        if (folder / "vocab.json").exists():
            return folder
    return _byte_tokenizer()


@functools.lru_cache(maxsize=None)
def _byte_tokenizer() -> Path:
    """A CLIP tokenizer with no merges: every character is a token. A few KB, built in a temp folder."""
    import json

    from lab.world.make_tokenizer import _byte_symbols

    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    out = Path(tempfile.mkdtemp(prefix="lab_tok_"))
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return out


@functools.lru_cache(maxsize=None)
def _tokenizer(folder: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def tiny_text_encoder(with_projection: bool = False, seed: int = 0, width: int = TEXT_WIDTH):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=77, projection_dim=width, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def tiny_vae(seed: int = 0):
    """AutoencoderKL with SD's 8x spatial compression (4 levels) at 8 channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        sample_size=64,
    ).eval()


def tiny_pipeline(arch: str = "sd15", scheduler: str = "ddim", tokenizer: str | Path | None = None, seed: int = 0,
                  width_divisor: int = 10):
    """A full StableDiffusionPipeline ('sd15', 'sd21') or StableDiffusionXLPipeline ('sdxl') with tiny parts."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    sched_kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    schedulers = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
    if scheduler not in schedulers:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(schedulers)}")
    if scheduler == "ddim":
        sched_kw.update(steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    sched = schedulers[scheduler](**sched_kw)
    tok = _tokenizer(str(tokenizer or tokenizer_dir()))
    unet, vae = tiny_unet(arch, seed, width_divisor), tiny_vae(seed)
    if arch == "sdxl":
        widths = (768, 1280) if width_divisor == 1 else (TEXT_WIDTH, TEXT_WIDTH)  # CLIP ViT-L and OpenCLIP bigG widths
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=tiny_text_encoder(False, seed, widths[0]),
            text_encoder_2=tiny_text_encoder(True, seed + 1, widths[1]),
            tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched,
        )
    else:
        text = tiny_text_encoder(False, seed, width=unet.config.cross_attention_dim)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(DEVICE)


def generate(pipe, prompt="a red square", steps: int = 2, size: int = 64, seed: int = 0, **kw) -> torch.Tensor:
    """One seeded generation returning the image tensor (batch, 3, H, W) in [0, 1]."""
    kw.setdefault("guidance_scale", 7.5)
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, height=size, width=size, num_inference_steps=steps, generator=g, output_type="pt", **kw).images
