"""DIFT features: noise a real image at one timestep, run the UNet once (only up to a chosen block), read that block.

    fmaps = featurize(pipe, ["cat.jpg", array], t=261, block="up_blocks.1", ensemble=8, prompt="a photo of a cat")
    fmaps[0].tensor.shape        # (C, h, w): the block's output, averaged over 8 noise draws
    fmaps[0].image_size          # (H, W) of the image as given: points are (x, y) pixels in it

featurize(pipe, images, t, block, ensemble, prompt, size, seed, batch_size) -> list[FeatureMap]   the whole method
FeatureMap(tensor, image_size, input_size, meta)                      plain data: one image's features
load_image(image) -> (3, H, W) in [0, 1]       a path, a PIL image, an (H, W[, 3|4]) array or a (3, H, W) tensor
input_size(pipe, image_size, size) -> (h, w)   the pixel size the model sees: "native", "multiple" or explicit
prepare / encode / condition / block_features   the steps of featurize, for studies that reuse latents or want
                                               several blocks from one UNet pass

Any SD-family pipeline works (SD 1.x, 2.x, SDXL, the built-in model): SDXL's two text encoders come from
pipe.encode_prompt and its added conditioning (pooled text_embeds + time_ids) is built for the input size. The UNet
is stopped after `block` with lab.hooks.run_until, so the rest of it is not computed. Noise is added with a DDPM
scheduler built from pipe.scheduler.config (the same betas; the user's scheduler is not touched). Each image's noise
depends only on (seed, the image), so an image gets the same features alone or in any batch.

SD3 / SD3.5 and FLUX.1 work the same way (dit.py): block is a transformer block ("transformer_blocks.12", Flux's
"single_transformer_blocks.3" too), its image tokens as (C, h, w) on the token grid; the noise is flow matching's,
x_t = (1 - sigma) x_0 + sigma * noise with sigma = t / 1000; the conditioning is each pipeline's own.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lab.hooks import Keep, points, run_until, trace
from lab.hooks.points import denoiser_of

from . import dit

DEFAULT_T = 261  # DIFT's published setting for SD 2.1 on SPair-71k
DEFAULT_BLOCK = "up_blocks.1"  # on a DiT the default is the middle double-stream block (default_block)
FEATURE_KINDS = ("block", "resnet", "transformer")  # points whose output is a (B, C, h, w) map


@dataclass
class FeatureMap:
    """One image's features: ``tensor`` (C, h, w) float32 on the model's device, covering the whole image.

    image_size: (H, W) of the image as it was given; every point in or out of the match functions is (x, y) in its
    pixels (pixel centres at integers). input_size: (H, W) the model saw after resizing. meta: t, block, ensemble,
    prompt, seed, model.
    """

    tensor: torch.Tensor
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    meta: dict = field(default_factory=dict)


# --- images ---------------------------------------------------------------------------------------------------------
def load_image(image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] from a path, a PIL image, an array (H, W), (H, W, 3) or (H, W, 4) (uint8, or
    float in [0, 1]), or a tensor (3, H, W) in [0, 1]. Alpha is dropped, grey is repeated.

        load_image("cat.jpg").shape        # (3, 375, 500)
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file {str(path)!r}")
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if torch.is_tensor(image):
        x = image.detach().cpu()
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W); got {tuple(x.shape)}")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    elif isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got {image.shape}")
        x = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # (3, H, W), a writable copy
        x = x.float() / 255 if image.dtype == np.uint8 else x.float()
    else:
        raise TypeError(f"cannot read an image from a {type(image).__name__}; pass a path, a PIL image, "
                        "an (H, W, 3) array or a (3, H, W) tensor")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"an empty image: {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float image values must be in [0, 1]; got [{lo:.3g}, {hi:.3g}]")
    return x.clamp(0, 1)


def size_multiple(pipe) -> int:
    """Pixel sizes the UNet maps cleanly: vae_scale_factor * 2**(number of downsamplers), 32 for SD and SDXL; a
    DiT's token side, 16 for SD3 and Flux."""
    if dit.is_dit(pipe):
        return dit.size_multiple(pipe)
    downs = sum(1 for b in pipe.unet.down_blocks if getattr(b, "downsamplers", None))
    return int(pipe.vae_scale_factor) * 2**downs


def native_size(pipe) -> tuple[int, int]:
    """The image size the model was trained at: unet.config.sample_size * vae_scale_factor (a DiT: dit.native_size)."""
    if dit.is_dit(pipe):
        return dit.native_size(pipe)
    s = pipe.unet.config.sample_size
    h, w = (s, s) if isinstance(s, int) else s
    return int(h) * int(pipe.vae_scale_factor), int(w) * int(pipe.vae_scale_factor)


def input_size(pipe, image_size: tuple[int, int], size="native") -> tuple[int, int]:
    """The (h, w) pixels an image of `image_size` (H, W) is resized to before encoding.

    size: "native" (the model's training size, square: DIFT's choice, 768 for SD 2.1), "multiple" (each side
    rounded to the nearest multiple of size_multiple(pipe), keeping the aspect ratio), an int (square) or (h, w),
    which must be multiples of size_multiple(pipe).
    """
    m = size_multiple(pipe)
    if size == "native":
        return native_size(pipe)
    if size == "multiple":
        return tuple(max(m, int(round(s / m)) * m) for s in image_size)
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(s, int) for s in size):
        if any(s <= 0 or s % m for s in size):
            near = tuple(max(m, round(s / m) * m) for s in size)
            raise ValueError(f"size={size} is not a multiple of {m} for this model; use {near} or size='multiple'")
        return size
    raise ValueError(f"size={size!r}; use 'native', 'multiple', an int or (h, w)")


@dataclass
class Prepared:
    """Images ready for the VAE: ``pixels[i]`` (3, h, w) in [-1, 1] at input size, sizes, per-image noise seeds."""

    pixels: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]
    seeds: list[int]


def prepare(pipe, images, size="native", seed: int = 0) -> Prepared:
    """Load and resize `images` (bicubic, antialiased) to their input size; derive each image's noise seed."""
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence) or _is_single_array(images):
        images = [images]
    if len(images) == 0:
        raise ValueError("no images given")
    pixels, sizes, ins, seeds = [], [], [], []
    for image in images:
        x = load_image(image)  # (3, H, W) in [0, 1]
        hw = (x.shape[1], x.shape[2])
        target = input_size(pipe, hw, size)
        if target != hw:
            x = F.interpolate(x[None], size=target, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
        x = x * 2 - 1  # (3, h, w) in [-1, 1]
        digest = hashlib.blake2b(x.numpy().tobytes() + int(seed).to_bytes(8, "little", signed=True), digest_size=8)
        pixels.append(x), sizes.append(hw), ins.append(target)
        seeds.append(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
    return Prepared(pixels, sizes, ins, seeds)


def _is_single_array(images) -> bool:
    return isinstance(images, np.ndarray) or torch.is_tensor(images)


# --- the model ------------------------------------------------------------------------------------------------------
def _device(pipe) -> torch.device:
    return getattr(pipe, "_execution_device", None) or denoiser_of(pipe).device


@torch.no_grad()
def encode(pipe, pixels: Sequence[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
    """Latents (N, 4, h/8, w/8) (SD3 / Flux: 16 channels) on the model's device: vae.encode(x).latent_dist.mean
    * scaling_factor (minus shift_factor first where the VAE has one). All `pixels` must share one size."""
    vae, device = pipe.vae, _device(pipe)
    scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None)
    out = []
    for i in range(0, len(pixels), batch_size):
        x = torch.stack(list(pixels[i:i + batch_size])).to(device, vae.dtype)  # (b, 3, h, w)
        z = vae.encode(x).latent_dist.mean  # (b, 4, h/8, w/8)
        out.append(((z - shift) if shift is not None else z) * scale)
    z = torch.cat(out)
    if not torch.isfinite(z).all():
        raise FloatingPointError(f"the VAE gave non-finite latents in {vae.dtype}; this VAE needs float32 "
                                 "(config.force_upcast): load the pipeline's VAE in float32 or use an fp16-safe VAE")
    return z


@torch.no_grad()
def condition(pipe, prompts: Sequence[str], input_hw: tuple[int, int]) -> dict:
    """UNet keyword arguments for one row per prompt: encoder_hidden_states (N, tokens, dim) and, for SDXL,
    added_cond_kwargs {text_embeds (N, pooled), time_ids (N, 6) = (h, w, 0, 0, h, w)}; for SD3 / Flux the
    transformer's encoder_hidden_states and pooled_projections (dit.condition)."""
    if dit.is_dit(pipe):
        return dit.condition(pipe, prompts)
    device, dtype = _device(pipe), pipe.unet.dtype
    unique = list(dict.fromkeys(prompts))
    sdxl = getattr(pipe, "text_encoder_2", None) is not None or pipe.unet.config.addition_embed_type == "text_time"
    if sdxl:
        emb, _, pooled, _ = pipe.encode_prompt(unique, device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
    else:
        emb, _ = pipe.encode_prompt(unique, device, 1, False)
    rows = torch.tensor([unique.index(p) for p in prompts], device=device)
    kw = {"encoder_hidden_states": emb[rows].to(dtype)}  # (N, tokens, dim)
    if sdxl:
        h, w = input_hw
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=device, dtype=dtype).expand(len(prompts), 6)
        kw["added_cond_kwargs"] = {"text_embeds": pooled[rows].to(dtype), "time_ids": time_ids}
    return kw


def feature_points(pipe) -> list[str]:
    """Names whose output is a feature map (blocks, resnets, transformers), in forward order."""
    return [p.name for p in points(pipe) if p.kind in FEATURE_KINDS]


def default_block(pipe) -> str:
    """'up_blocks.1' (DIFT's) on a UNet; the middle double-stream block on a DiT ('transformer_blocks.12' of 24)."""
    if dit.is_dit(pipe):
        return f"transformer_blocks.{len(denoiser_of(pipe).transformer_blocks) // 2}"
    return DEFAULT_BLOCK


def menu_blocks(pipe) -> list[str]:
    """The blocks a notebook menu offers: DIFT's up_blocks on a UNet; on a DiT every transformer block of both
    streams (Flux's single-stream ones too), forward order."""
    if dit.is_dit(pipe):
        return [n for n in feature_points(pipe) if n.count(".") == 1]
    return [f"up_blocks.{i}" for i in range(len(pipe.unet.up_blocks))]


def check_block(pipe, block) -> str:
    """The full point name for `block`: a name like 'up_blocks.1' (or any resnet / transformer point; on a DiT
    'transformer_blocks.k' or 'single_transformer_blocks.k'), an int i for 'up_blocks.i' ('transformer_blocks.i'),
    or None for default_block(pipe). An unknown one is a ValueError that lists the blocks."""
    if block is None:
        return default_block(pipe)
    names = feature_points(pipe)
    blocks = [n for n in names if n.count(".") <= 1]
    prefix = "transformer_blocks" if dit.is_dit(pipe) else "up_blocks"
    name = f"{prefix}.{block}" if isinstance(block, (int, np.integer)) and not isinstance(block, bool) else block
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown block {block!r}; blocks: {', '.join(blocks)} (or any resnet/transformer point "
                         f"of lab.hooks.points(unet), e.g. {names[1]})")
    return name


def check_timestep(pipe, t) -> int:
    """t as an int in [0, num_train_timesteps); anything else is a ValueError."""
    total = int(pipe.scheduler.config.num_train_timesteps)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) and not (torch.is_tensor(t) and t.numel() == 1):
        raise ValueError(f"t={t!r} must be an integer timestep in [0, {total})")
    if not 0 <= int(t) < total:
        raise ValueError(f"t={int(t)} is outside [0, {total}) for this scheduler (num_train_timesteps={total})")
    return int(t)


def noise_schedule(pipe):
    """A DDPMScheduler with the pipeline scheduler's betas; only its add_noise is used, pipe.scheduler is untouched."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dict(pipe.scheduler.config))


@torch.no_grad()
def block_features(pipe, latents: torch.Tensor, t: int, blocks: Sequence[str], cond: dict, seeds: Sequence[int],
                   ensemble: int = 8, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """{block: (N, C, h, w) float32}: each block's output averaged over `ensemble` noisy copies of each latent.

    latents: (N, 4, h, w); cond: condition() for the N images; seeds: one per image (its noise draws). The UNet runs
    on at most `batch_size` rows at a time and stops after the last of `blocks` in forward order; earlier blocks are
    read with a lab.hooks trace on the same pass. Memory: N * C * h * w floats per block, plus one UNet batch. A DiT
    (SD3, Flux) is noised by flow matching and called as dit.call says; its blocks are read the same way.
    """
    t = check_timestep(pipe, t)
    if ensemble < 1 or batch_size < 1:
        raise ValueError(f"ensemble={ensemble} and batch_size={batch_size} must be >= 1")
    if len(seeds) != len(latents):
        raise ValueError(f"{len(seeds)} seeds for {len(latents)} latents")
    order = feature_points(pipe)
    names = sorted({check_block(pipe, b) for b in blocks}, key=order.index)
    unet, device, on_dit = denoiser_of(pipe), latents.device, dit.is_dit(pipe)
    sched, n = (None if on_dit else noise_schedule(pipe)), len(latents)
    noise = torch.cat([torch.randn((ensemble, *latents.shape[1:]), generator=torch.Generator().manual_seed(int(s)))
                       for s in seeds])  # (N*E, 4, h, w), drawn on the CPU so every device gets the same noise
    owner = torch.arange(n).repeat_interleave(ensemble)  # image of each row
    sums: dict[str, torch.Tensor] = {}
    for r0 in range(0, n * ensemble, batch_size):
        rows = owner[r0:r0 + batch_size]
        z0 = latents[rows.to(device)].float()  # (b, 4, h, w)
        kw = _take_rows(cond, rows.to(device))
        if on_dit:
            args, kw = (), dit.call(pipe, z0, noise[r0:r0 + len(rows)], t, kw)  # flow matching: (1 - s) z0 + s n
        else:
            ts = torch.full((len(rows),), t, dtype=torch.long)
            zt = sched.add_noise(z0.cpu(), noise[r0:r0 + len(rows)], ts).to(device, unet.dtype)  # (b, 4, h, w)
            args = (zt, ts.to(device))
        out = {}
        if len(names) > 1:
            with trace(unet, names[:-1], keep=Keep(steps="sum", branches=("cond",), device=device)) as tr:
                out[names[-1]] = run_until(unet, names[-1], *args, **kw)
            out.update({k: tr.cache[k][0] for k in names[:-1]})  # (branch, b, C, h, w) -> (b, C, h, w)
        else:
            out[names[-1]] = run_until(unet, names[-1], *args, **kw)  # (b, C, h', w')
        for k, v in out.items():
            if k not in sums:
                sums[k] = torch.zeros((n, *v.shape[1:]), device=device)  # (N, C, h', w')
            sums[k].index_add_(0, rows.to(device), v.float())
    return {k: sums[k] / ensemble for k in names}


def _take_rows(cond: dict, rows: torch.Tensor) -> dict:
    out = {}
    for k, v in cond.items():
        out[k] = {kk: vv[rows] for kk, vv in v.items()} if isinstance(v, dict) else v[rows]
    return out


def featurize(pipe, images, t: int = DEFAULT_T, block=None, ensemble: int = 8, prompt="",
              size="native", seed: int = 0, batch_size: int = 8) -> list[FeatureMap]:
    """DIFT features of each image: one FeatureMap per image, in order.

        fmaps = featurize(pipe, ["a.jpg", "b.jpg"], prompt="a photo of a cat")   # DIFT's SPair setting for SD 2.1
        fmaps = featurize(pipe, render(scene), t=100, block="up_blocks.2", ensemble=4, size="multiple")
        fmaps = featurize(sd3, "cat.jpg", t=261, block="transformer_blocks.12", size=1024)  # SD3 / Flux alike

    images: one image or a list (paths, PIL images, arrays, tensors; any sizes). prompt: one for all or one per
    image. t: timestep in [0, num_train_timesteps) (SD3 / Flux: sigma = t / 1000). block: where to read (and stop),
    see check_block (default 'up_blocks.1'; on a DiT the middle double-stream block). ensemble:
    noise draws averaged. size: see input_size. batch_size: UNet rows per call (images x ensemble are batched;
    memory grows with it). The pipeline is not changed.
    """
    t, name = check_timestep(pipe, t), check_block(pipe, block)
    prep = prepare(pipe, images, size, seed)
    n = len(prep.pixels)
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images; give one prompt or one per image")
    result: list[FeatureMap | None] = [None] * n
    for hw in dict.fromkeys(prep.input_sizes):  # images of one input size are batched together
        idx = [i for i in range(n) if prep.input_sizes[i] == hw]
        z = encode(pipe, [prep.pixels[i] for i in idx], batch_size)  # (n_hw, 4, h/8, w/8)
        cond = condition(pipe, [prompts[i] for i in idx], hw)
        feats = block_features(pipe, z, t, [name], cond, [prep.seeds[i] for i in idx], ensemble, batch_size)[name]
        for j, i in enumerate(idx):
            meta = {"t": t, "block": name, "ensemble": ensemble, "prompt": prompts[i], "seed": seed,
                    "model": getattr(pipe, "name_or_path", None) or type(pipe).__name__}
            result[i] = FeatureMap(feats[j], prep.image_sizes[i], hw, meta)  # (C, h, w)
    return result
