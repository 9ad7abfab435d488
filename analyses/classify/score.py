"""The diffusion model as a classifier: rank candidate captions of an image by how well the model denoises the image
given each caption (same noise for every caption), or by how strongly the image attends to each caption's words.

    >>> from analyses.classify import errors, rank
    >>> e = errors(pipe, image, ["a red circle ...", "a blue circle ..."], timesteps=[100, 300, 500, 700, 900])
    >>> e.shape                                  # doctest: +SKIP
    torch.Size([2, 5])                           # (captions, timesteps): mean squared error of the UNet's prediction
    >>> rank(e)                                  # doctest: +SKIP
    [0, 1]                                       # best caption first: least error averaged over t

errors(pipe, image, captions, timesteps, seed, noises)   (captions, timesteps) denoising error, one UNet batch per
                                  noise draw; every caption sees the same x_t. SD 1.x / 2.x (epsilon or
                                  v-prediction) and SDXL (its pooled text and size conditioning)
attention(pipe, image, captions, timesteps, seed)   (captions, timesteps) cross-attention agreement: per layer,
                                  the largest probability any image position gives each of the caption's words,
                                  averaged over words, heads and layers (higher is better; the seed's variant)
rank(scores, higher_is_better)    caption indices, best first, averaging over timesteps
timesteps(n, low, high)           n evenly spaced training timesteps
"""
from __future__ import annotations

import numpy as np
import torch

from lab.hooks import Keep, select, trace
from lab.pipes import unet_only


def timesteps(n: int, low: int = 50, high: int = 950) -> list[int]:
    """`n` evenly spaced training timesteps in [low, high]."""
    return [int(round(t)) for t in np.linspace(low, high, n)]


@torch.no_grad()
def require_unet(pipe) -> None:
    """Refuse an SD3 / Flux pipeline by name (lab.pipes.unet_only): what the scorers and the picker run on."""
    unet_only(pipe, "the diffusion classifier", "it ranks captions by a UNet's noise-prediction error at DDPM "
              "timesteps and by its cross-attention (attn2); the flow-matching counterpart (velocity error at "
              "sigma = t / 1000, joint attention) is not written yet")


def encode_image(pipe, image) -> torch.Tensor:
    """(1, 4, h, w) latents of an (H, W, 3) uint8 image: the VAE posterior mean times its scaling factor.
    Every scorer starts here, so an SD3 / Flux pipeline is refused here by name."""
    require_unet(pipe)
    vae = pipe.vae
    x = torch.as_tensor(np.asarray(image)).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1  # (1, 3, H, W)
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (1, 4, h, w)


@torch.no_grad()
def _text(pipe, captions: list[str], image_size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """(encoder_hidden_states (n, 77, d), added_cond_kwargs) for the captions, as the pipeline conditions its UNet."""
    device = pipe.unet.device
    out = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    if len(out) == 4:  # SDXL: (embeds, negative, pooled, negative pooled)
        h, w = image_size
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=out[0].dtype, device=device).repeat(len(captions), 1)
        return out[0], {"text_embeds": out[2], "time_ids": ids}
    return out[0], {}


def _noisy(pipe, latents: torch.Tensor, ts: list[int], generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t (T, c, h, w), target (T, c, h, w), t (T,)) for one noise draw shared by every timestep and caption."""
    noise = torch.randn(latents.shape[1:], generator=generator).to(latents)  # (c, h, w)
    noise = noise.expand(len(ts), *noise.shape)  # (T, c, h, w)
    t = torch.tensor(ts, device=latents.device)  # (T,)
    x0 = latents.expand(len(ts), *latents.shape[1:])  # (T, c, h, w)
    sched = pipe.scheduler
    xt = sched.add_noise(x0, noise, t)
    kind = sched.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"prediction_type {kind!r} is not supported; supported: epsilon, v_prediction")
    return xt, target, t


@torch.no_grad()
def errors(pipe, image, captions: list[str], timesteps: list[int], seed: int = 0, noises: int = 1) -> torch.Tensor:
    """(captions, timesteps) mean squared error of the UNet's prediction at x_t, averaged over `noises` draws."""
    if not captions:
        raise ValueError("errors needs at least one caption")
    latents = encode_image(pipe, image)  # (1, 4, h, w)
    text, added = _text(pipe, list(captions), tuple(np.asarray(image).shape[:2]))
    n, T = len(captions), len(timesteps)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(n, T)
    for _ in range(noises):
        xt, target, t = _noisy(pipe, latents, list(timesteps), gen)
        xt_b = xt.repeat(n, 1, 1, 1)  # (n*T, c, h, w): caption-major
        t_b = t.repeat(n)  # (n*T,)
        text_b = text.repeat_interleave(T, 0)  # (n*T, 77, d)
        added_b = {k: v.repeat_interleave(T, 0) for k, v in added.items()}
        pred = pipe.unet(xt_b, t_b, encoder_hidden_states=text_b, added_cond_kwargs=added_b or None).sample
        err = ((pred.float() - target.repeat(n, 1, 1, 1).float()) ** 2).mean((1, 2, 3))  # (n*T,)
        total += err.reshape(n, T).cpu()
    return total / noises


@torch.no_grad()
def attention(pipe, image, captions: list[str], timesteps: list[int], seed: int = 0) -> torch.Tensor:
    """(captions, timesteps) cross-attention agreement (see the module docstring); higher means a better fit."""
    from analyses.daam.words import words

    latents = encode_image(pipe, image)
    text, added = _text(pipe, list(captions), tuple(np.asarray(image).shape[:2]))
    n, T = len(captions), len(timesteps)
    xt, _, t = _noisy(pipe, latents, list(timesteps), torch.Generator().manual_seed(seed))
    names = select(pipe, kind="attn2")
    with trace(pipe.unet, names, keep=Keep(steps="sum", heads="mean"), branches=("cond",)) as tr:
        pipe.unet(xt.repeat(n, 1, 1, 1), t.repeat(n), encoder_hidden_states=text.repeat_interleave(T, 0),
                  added_cond_kwargs={k: v.repeat_interleave(T, 0) for k, v in added.items()} or None)
    out = torch.zeros(n, T)
    for c, caption in enumerate(captions):
        keys = [k for w in words(pipe, caption) if w.kept for k in w.tokens]
        for name in names:
            probs = tr.cache[name][0, c * T:(c + 1) * T]  # (T, query, key)
            out[c] += probs[:, :, keys].amax(1).mean(-1).cpu() / len(names)  # (T,)
    return out


def rank(scores: torch.Tensor, higher_is_better: bool = False) -> list[int]:
    """Caption indices, best first, by the mean over timesteps of (captions, timesteps) scores."""
    mean = scores.mean(1)
    return torch.argsort(mean, descending=higher_is_better).tolist()
