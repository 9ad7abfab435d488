"""The diffusion model as a classifier: rank candidate captions of an image by how well the model denoises the image
given each caption (same noise for every caption), or by how strongly the image attends to each caption's words.

    >>> from analyses.classify import errors, rank
    >>> e = errors(pipe, image, ["a red circle ...", "a blue circle ..."], timesteps=[100, 300, 500, 700, 900])
    >>> e.shape                                  # doctest: +SKIP
    torch.Size([2, 5])                           # (captions, timesteps): mean squared error of the prediction
    >>> rank(e)                                  # doctest: +SKIP
    [0, 1]                                       # best caption first: least error averaged over t

errors(pipe, image, captions, timesteps, seed, noises)   (captions, timesteps) denoising error, one denoiser batch
                                  per noise draw; every caption sees the same x_t. UNets: SD 1.x / 2.x (epsilon or
                                  v-prediction) and SDXL (its pooled text and size conditioning), DDPM noising.
                                  SD3 / SD3.5 and FLUX.1: flow matching, the error of the predicted velocity
                                  noise - x_0 at sigma = t / 1000 (flow.py)
attention(pipe, image, captions, timesteps, seed)   (captions, timesteps) cross-attention agreement: per layer,
                                  the largest probability any image position gives each of the caption's words,
                                  averaged over words, heads and layers (higher is better; the seed's variant).
                                  UNets: every attn2; DiTs: the image->text view of every joint-attention layer,
                                  words aligned in each text window (SD3: CLIP then T5; Flux: T5) as DAAM does
rank(scores, higher_is_better)    caption indices, best first, averaging over timesteps
timesteps(n, low, high)           n evenly spaced training timesteps (the same list serves both families)
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from lab.hooks import Keep, select, trace
from lab.hooks.points import denoiser_of
from lab.pipes import family_of

from . import flow


def timesteps(n: int, low: int = 50, high: int = 950) -> list[int]:
    """`n` evenly spaced training timesteps in [low, high] (on SD3 / Flux: sigma = t / 1000, flow.py)."""
    return [int(round(t)) for t in np.linspace(low, high, n)]


def encode_image(pipe, image) -> torch.Tensor:
    """(1, c, h, w) latents of an (H, W, 3) uint8 image: the VAE posterior mean times its scaling factor, less its
    shift_factor first on SD3 / Flux (4 channels on SD, 16 on SD3 / Flux). Every scorer starts here, so a pipeline
    whose denoiser is neither a UNet nor an SD3 / Flux transformer is refused here by name (lab.pipes.family_of)."""
    fam = family_of(pipe)
    if fam != "unet":
        flow.check_size(pipe, np.asarray(image).shape[:2])
    vae = pipe.vae
    x = torch.as_tensor(np.asarray(image)).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1  # (1, 3, H, W)
    if fam == "unet":
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (1, 4, h, w)
    shift = vae.config.get("shift_factor") or 0.0  # the SD3 / Flux img2img pipelines' shift and scale
    return (vae.encode(x).latent_dist.mean - shift) * vae.config.scaling_factor  # (1, 16, h, w)


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
def _conditioning(pipe, captions: list[str], image):
    """The captions' conditioning: a UNet's (encoder_hidden_states, added_cond_kwargs), or a DiT's flow.Text."""
    if family_of(pipe) == "unet":
        return _text(pipe, captions, tuple(np.asarray(image).shape[:2]))
    return flow.conditioning(pipe, captions)


def _prediction(pipe, latents: torch.Tensor, cond, ts: list[int], generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target), both (n*T, c, h, w) caption-major, for one noise draw: one denoiser call for every
    caption at every timestep. A UNet predicts the noise (or v) at DDPM's x_t, a DiT the velocity (flow.py)."""
    if isinstance(cond, flow.Text):
        xt, target, t = flow.noisy(pipe, latents, ts, generator)
        return flow.velocity(pipe, xt, t, cond), target.repeat(cond.states.shape[0], 1, 1, 1)
    text, added = cond
    n, T = text.shape[0], len(ts)
    xt, target, t = _noisy(pipe, latents, ts, generator)
    xt_b = xt.repeat(n, 1, 1, 1)  # (n*T, c, h, w): caption-major
    t_b = t.repeat(n)  # (n*T,)
    text_b = text.repeat_interleave(T, 0)  # (n*T, 77, d)
    added_b = {k: v.repeat_interleave(T, 0) for k, v in added.items()}
    pred = pipe.unet(xt_b, t_b, encoder_hidden_states=text_b, added_cond_kwargs=added_b or None).sample
    return pred, target.repeat(n, 1, 1, 1)


@torch.no_grad()
def errors(pipe, image, captions: list[str], timesteps: list[int], seed: int = 0, noises: int = 1) -> torch.Tensor:
    """(captions, timesteps) mean squared error of the denoiser's prediction at x_t, averaged over `noises` draws
    (UNet: of the noise, or v; SD3 / Flux: of the velocity noise - x_0 at sigma = t / 1000)."""
    if not captions:
        raise ValueError("errors needs at least one caption")
    latents = encode_image(pipe, image)  # (1, c, h, w)
    cond = _conditioning(pipe, list(captions), image)
    n, T = len(captions), len(timesteps)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(n, T)
    for _ in range(noises):
        pred, target = _prediction(pipe, latents, cond, list(timesteps), gen)  # (n*T, c, h, w) each
        err = ((pred.float() - target.float()) ** 2).mean((1, 2, 3))  # (n*T,)
        total += err.reshape(n, T).cpu()
    return total / noises


def _keys(pipe, caption: str, context) -> list[int]:
    """The text keys of every word of `caption` the encoders keep: a UNet's CLIP positions, or a DiT's in each text
    window of `context` (flow.context: SD3 CLIP then T5; Flux T5), aligned as DAAM aligns them."""
    from analyses.daam import dit
    from analyses.daam.words import words

    if context is None:
        return [k for w in words(pipe, caption) if w.kept for k in w.tokens]
    run = SimpleNamespace(prompt=caption, context=context)  # what dit.word_keys reads of a GlobalMaps
    return [k for keys in dit.word_keys(run, pipe).values() for k in keys]


@torch.no_grad()
def attention(pipe, image, captions: list[str], timesteps: list[int], seed: int = 0) -> torch.Tensor:
    """(captions, timesteps) cross-attention agreement (see the module docstring); higher means a better fit.

    Memory: 4 bytes x captions x timesteps x image positions x text keys per layer, heads averaged; on a DiT only
    the captions' word keys are kept (Keep.tokens), not its 333 (SD3) or 512 (Flux) text keys."""
    latents = encode_image(pipe, image)
    cond = _conditioning(pipe, list(captions), image)
    n, T = len(captions), len(timesteps)
    unet = family_of(pipe) == "unet"
    keys = [_keys(pipe, caption, None if unet else flow.context(pipe, cond)) for caption in captions]
    kept = None if unet else sorted(set().union(*keys)) or None  # the DiT's columns kept, in key order
    column = {k: i for i, k in enumerate(kept)} if kept else {}
    names = select(pipe, kind="attn2" if unet else "image->text")
    with trace(denoiser_of(pipe), names, keep=Keep(steps="sum", heads="mean", tokens=kept), branches=("cond",)) as tr:
        _prediction(pipe, latents, cond, list(timesteps), torch.Generator().manual_seed(seed))
    out = torch.zeros(n, T)
    for c in range(n):
        cols = [column[k] for k in keys[c]] if kept else keys[c]
        for name in names:
            probs = tr.cache[name][0, c * T:(c + 1) * T]  # (T, query, key)
            out[c] += probs[:, :, cols].amax(1).mean(-1).cpu() / len(names)  # (T,)
    return out


def rank(scores: torch.Tensor, higher_is_better: bool = False) -> list[int]:
    """Caption indices, best first, by the mean over timesteps of (captions, timesteps) scores."""
    mean = scores.mean(1)
    return torch.argsort(mean, descending=higher_is_better).tolist()
