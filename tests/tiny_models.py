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


# --- diffusion transformers: the real transformer/config.json of SD3 / SD3.5 / FLUX.1 ------------------------------
SD3_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)
SD35_MEDIUM = dict(
    SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)),
)
SD35_LARGE = dict(
    SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm",
)
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_SCHNELL = dict(FLUX_DEV, guidance_embeds=False)
REAL_DIT = {"sd3": SD3_MEDIUM, "sd35m": SD35_MEDIUM, "sd35l": SD35_LARGE, "flux-dev": FLUX_DEV,
            "flux-schnell": FLUX_SCHNELL}
T5_WIDTH = 64  # the tiny T5's d_model: the DiTs' joint_attention_dim (SD3 pads the two CLIPs' 2 x 32 up to it)


def reduced_dit_config(arch: str, full_depth: bool = False) -> dict:
    """The real transformer config of `arch` ('sd3' | 'sd35m' | 'sd35l' | 'flux-dev' | 'flux-schnell'), heads kept,
    head_dim 8 (Flux's rotary axes 16/56/56 scaled to 2/2/4), text widths the tiny encoders'.

    full_depth=False cuts the blocks to the fewest that keep every block TYPE: SD3 two joint blocks and the last,
    context-pre-only one (SD3.5-medium: a dual-attention block first); Flux two double- and two single-stream blocks.
    """
    if arch not in REAL_DIT:
        raise ValueError(f"unknown DiT arch {arch!r}; known: {', '.join(REAL_DIT)}")
    cfg = dict(REAL_DIT[arch])
    cfg["attention_head_dim"] = 8
    cfg["joint_attention_dim"] = T5_WIDTH
    if arch.startswith("flux"):
        cfg["axes_dims_rope"] = (2, 2, 4)
        cfg["pooled_projection_dim"] = TEXT_WIDTH
        if not full_depth:
            cfg.update(num_layers=2, num_single_layers=2)
        return cfg
    cfg["caption_projection_dim"] = cfg["num_attention_heads"] * 8  # SD3 needs it equal to the inner width
    cfg["pooled_projection_dim"] = 2 * TEXT_WIDTH  # CLIP-L and CLIP-G pooled, concatenated
    cfg["sample_size"] = 8
    cfg["pos_embed_max_size"] = 16
    if not full_depth:
        cfg["num_layers"] = 4 if arch == "sd35m" else 3
        if arch == "sd35m":
            cfg["dual_attention_layers"] = (0,)
    return cfg


def tiny_dit(arch: str = "sd3", seed: int = 0, full_depth: bool = False, full_width: bool = False,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The DiT of `arch` at reduced width (reduced_dit_config), or with full_width=True its real config (REAL_DIT:
    SD3-medium 2.0B parameters, FLUX.1-dev 11.9B), random weights.

        tiny_dit("flux-dev", full_width=True, device="cuda", dtype=torch.bfloat16)   # 24 GB, built on the GPU

    The parameters are made and initialised on `device` (float32, then cast to `dtype`): FLUX.1-dev initialised on
    one CPU thread takes about 90 s and 48 GB, on a GPU seconds (48 GB there before the cast).
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cfg = reduced_dit_config(arch, full_depth)  # refuses an unknown arch
    torch.manual_seed(seed)
    cls = FluxTransformer2DModel if arch.startswith("flux") else SD3Transformer2DModel
    with torch.device(device):
        model = cls(**(dict(REAL_DIT[arch]) if full_width else cfg))
    return (model if dtype == torch.float32 else model.to(dtype=dtype)).eval()  # made in float32


T5_WORDS = ("a", "an", "the", "red", "blue", "green", "square", "circle", "triangle", "dog", "cat", "on", "mat",
            "of", "and", "photo", "big", "small", "next", "to", "with", "in")


@functools.lru_cache(maxsize=None)
def t5_tokenizer():
    """A T5 tokenizer (sentencepiece-style Unigram, '▁' marks a word start) over a few words and every letter: no
    sentencepiece model file is available offline, so it is built from a vocabulary list with transformers'
    T5TokenizerFast(vocab=...). Words outside T5_WORDS split into letters."""
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789,.")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in T5_WORDS]
    vocab += [(f"▁{c}", -4.0) for c in letters] + [(c, -5.0) for c in letters]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_t5(seed: int = 0, width: int = T5_WIDTH):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(t5_tokenizer()), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    torch.manual_seed(seed)
    return T5EncoderModel(cfg).eval()


def tiny_dit_vae(seed: int = 0):
    """AutoencoderKL with 8x compression and 16 latent channels (SD3 / Flux), with their shift and scale."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=4, layers_per_block=1,
        sample_size=64, shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def tiny_dit_pipeline(arch: str = "sd3", seed: int = 0, full_depth: bool = False, full_width: bool = False,
                      device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """A full StableDiffusion3Pipeline ('sd3', 'sd35m', 'sd35l') or FluxPipeline ('flux-dev', 'flux-schnell') with
    tiny parts (two CLIPs and a T5 for SD3; a CLIP and a T5 for Flux), on `device` (default devices.DEVICE).

        pipe = tiny_dit_pipeline("sd3", full_width=True, device="cuda", dtype=torch.float16)   # benchmarks/models.py

    full_width=True: the real transformer (tiny_dit, made on `device`), and text encoders two layers deep but at the
    real widths its config expects (CLIP-L 768, OpenCLIP bigG 1280, T5-XXL 4096), so joint_attention_dim and
    pooled_projection_dim are the published ones.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    device = DEVICE if device is None else device
    clip_l, clip_g, t5 = (768, 1280, 4096) if full_width else (TEXT_WIDTH, TEXT_WIDTH, T5_WIDTH)
    tok, vae = _tokenizer(str(tokenizer_dir())), tiny_dit_vae(seed)
    # full width: made on `device` (minutes on a CPU); reduced: on the CPU, the same weights wherever tests run
    transformer = tiny_dit(arch, seed, full_depth, full_width, device if full_width else "cpu", dtype)
    if arch.startswith("flux"):
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=tiny_text_encoder(False, seed, clip_l),
                            tokenizer=tok, text_encoder_2=tiny_t5(seed, t5), tokenizer_2=t5_tokenizer(),
                            transformer=transformer)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=sched, vae=vae,
            text_encoder=tiny_text_encoder(True, seed, clip_l), tokenizer=tok,
            text_encoder_2=tiny_text_encoder(True, seed + 1, clip_g), tokenizer_2=tok,
            text_encoder_3=tiny_t5(seed, t5), tokenizer_3=t5_tokenizer(),
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)  # diffusers warns at every cast, even to float32


def generate_dit(pipe, prompt="a red square", steps: int = 2, size: int = 64, seed: int = 0, **kw) -> torch.Tensor:
    """One seeded DiT generation (T5 window of 16 tokens, to stay fast) returning (batch, 3, H, W) in [0, 1]."""
    kw.setdefault("max_sequence_length", 16)
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, height=size, width=size, num_inference_steps=steps, generator=g, output_type="pt", **kw).images
