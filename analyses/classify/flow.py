"""The classifier's steps on a diffusion transformer (SD3 / SD3.5, FLUX.1): flow matching in place of DDPM.

    text = conditioning(pipe, ["a red square", "a blue square"])   # Text: what the pipeline gives its transformer
    context(pipe, text)                               # [{"encoder": "clip", "keys": [0, 77]}, {"encoder": "t5", ...}]
    xt, target, t = noisy(pipe, latents, [100, 500, 900], generator)     # x_t, the velocity to predict, timesteps
    v = velocity(pipe, xt, t, text)                   # (captions * T, c, h, w): one transformer call, caption-major

score.errors / score.attention call these for an SD3 or Flux pipeline. A timestep t means what the pipelines pass
their transformer: timestep = sigma * num_train_timesteps, so t in 0..1000 is the noise level sigma = t / 1000 and
x_t = (1 - sigma) x_0 + sigma * noise (the scheduler's scale_noise); the model predicts the velocity
v = noise - x_0. The scheduler's shift (SD3: 3; Flux: resolution-dependent) only chooses which sigmas a sampler
visits, not what a timestep means, so it is not applied: t = 500 is sigma 0.5 on every model (a 28-step SD3 sampler
at shift 3 spends 21 of its steps above it).

The latents are (mean - shift_factor) * scaling_factor: the img2img pipelines' shift and scale, of the VAE's
posterior mean (not a sample: the seed alone fixes the noise). The transformer is called as
StableDiffusion3Pipeline / FluxPipeline call it (tests/test_classify_dit.py holds the inputs equal to a pipeline's
first step): SD3 with the CLIP + T5 states and both CLIPs' pooled vectors; Flux with 2x2-packed latent tokens,
img_ids / txt_ids, timestep / 1000 and, on FLUX.1-dev, the guidance embedding at the pipeline's default
guidance_scale (FluxPipeline: 3.5). Text windows are the pipelines' defaults (max_sequence_length: SD3 256, Flux
512), which shapes-dit was trained with.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lab.pipes import family_of

# The shift and every other remapping of sigmas off: set_timesteps(sigmas=t / 1000) then keeps t / 1000 as it is.
UNSHIFTED = dict(shift=1.0, use_dynamic_shifting=False, shift_terminal=None, use_karras_sigmas=False,
                 use_exponential_sigmas=False, use_beta_sigmas=False, invert_sigmas=False)


@dataclass(frozen=True)
class Text:
    """The captions' conditioning: states (n, keys, d), pooled (n, p); Flux's txt_ids (keys, 3), else None."""

    states: torch.Tensor
    pooled: torch.Tensor
    ids: torch.Tensor | None = None


def latent_side(pipe) -> int:
    """Image pixels per latent pair: a DiT's image side must be a multiple (SD3 patches 2x2 latents, Flux packs)."""
    return pipe.vae_scale_factor * 2


def check_size(pipe, image_size: tuple[int, int]) -> None:
    """Refuse an image the transformer cannot tile, naming its size and the multiple it needs."""
    m = latent_side(pipe)
    if image_size[0] % m or image_size[1] % m:
        raise ValueError(f"a {image_size[0]}x{image_size[1]} image does not tile into {type(pipe).__name__}'s "
                         f"2x2 latent patches: its sides must be multiples of {m} pixels")


@torch.no_grad()
def conditioning(pipe, captions: list[str]) -> Text:
    """The captions encoded as the pipeline encodes a prompt, no unconditional branch."""
    device = pipe._execution_device
    if family_of(pipe) == "sd3":  # CLIP-L, CLIP-G (the same caption to both) and T5
        states, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=device,
                                                  do_classifier_free_guidance=False)  # (n, 77 + 256, d), (n, p)
        return Text(states, pooled)
    states, pooled, ids = pipe.encode_prompt(captions, None, device=device)  # (n, 512, d), (n, p), (512, 3)
    return Text(states, pooled, ids)


def context(pipe, text: Text) -> list[dict]:
    """Which encoder's tokens each of `text`'s keys holds, as a trace's cache.meta["context"] lists them: SD3 the
    CLIP window (both CLIPs side by side) then T5's, Flux T5's alone. [{"encoder": "clip" | "t5", "keys": [a, b]}]"""
    keys = text.states.shape[1]
    if family_of(pipe) == "flux":
        return [{"encoder": "t5", "keys": [0, keys]}]
    clip = pipe.tokenizer_max_length  # 77
    return [{"encoder": "clip", "keys": [0, clip]}, {"encoder": "t5", "keys": [clip, keys]}]


def noisy(pipe, latents: torch.Tensor, ts: list[int], generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t (T, c, h, w), velocity target (T, c, h, w), timesteps (T,)) for one noise draw shared by every t.

    A fresh scheduler from the pipeline's config (the pipeline's own is left alone), with the shift off, set to
    sigmas t / num_train_timesteps; its timesteps (sigma * num_train_timesteps) are what the transformer is given."""
    noise = torch.randn(latents.shape[1:], generator=generator).to(latents)  # (c, h, w)
    noise = noise.expand(len(ts), *noise.shape)  # (T, c, h, w)
    x0 = latents.expand(len(ts), *latents.shape[1:])  # (T, c, h, w)
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **UNSHIFTED)
    n_train = sched.config.num_train_timesteps
    bad = [t for t in ts if not 0 <= t <= n_train]
    if bad:
        raise ValueError(f"timesteps {bad} are outside 0..{n_train} (sigma = t / {n_train})")
    sched.set_timesteps(sigmas=[t / n_train for t in ts], device=latents.device)
    t = sched.timesteps  # (T,) float32: sigma * num_train_timesteps
    xt = sched.scale_noise(x0, t, noise)  # (1 - sigma) x0 + sigma noise
    return xt, noise - x0, t


def _guidance(pipe, rows: int) -> torch.Tensor | None:
    """FLUX.1-dev's guidance embedding input at the pipeline's default guidance_scale; None for schnell / SD3."""
    if not pipe.transformer.config.get("guidance_embeds", False):
        return None
    scale = inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default  # FluxPipeline: 3.5
    return torch.full([1], scale, device=pipe._execution_device, dtype=torch.float32).expand(rows)


def inputs(pipe, xt: torch.Tensor, t: torch.Tensor, text: Text) -> dict:
    """The transformer's keyword arguments for every caption at every timestep (n*T rows, caption-major), as the
    pipeline builds them for one denoising step. xt (T, c, h, w), t (T,)."""
    n, T = text.states.shape[0], xt.shape[0]
    dtype = text.states.dtype  # the pipelines make their latents in the prompt states' dtype
    x = xt.repeat(n, 1, 1, 1).to(dtype)  # (n*T, c, h, w)
    states = text.states.repeat_interleave(T, 0)  # (n*T, keys, d)
    pooled = text.pooled.repeat_interleave(T, 0)  # (n*T, p)
    if family_of(pipe) == "sd3":
        return dict(hidden_states=x, timestep=t.repeat(n), encoder_hidden_states=states, pooled_projections=pooled,
                    joint_attention_kwargs=None, return_dict=False)
    rows, c, h, w = x.shape
    packed = pipe._pack_latents(x, rows, c, h, w)  # (n*T, h/2 * w/2, 4c)
    img_ids = pipe._prepare_latent_image_ids(rows, h // 2, w // 2, x.device, dtype)  # (h/2 * w/2, 3)
    return dict(hidden_states=packed, timestep=t.repeat(n).to(dtype) / 1000, guidance=_guidance(pipe, rows),
                pooled_projections=pooled, encoder_hidden_states=states, txt_ids=text.ids, img_ids=img_ids,
                joint_attention_kwargs={}, return_dict=False)


@torch.no_grad()
def velocity(pipe, xt: torch.Tensor, t: torch.Tensor, text: Text) -> torch.Tensor:
    """(n*T, c, h, w) predicted velocity for n captions at T timesteps (caption-major), one transformer call."""
    kwargs = inputs(pipe, xt, t, text)
    if family_of(pipe) == "sd3":
        return pipe.transformer(**kwargs)[0]
    with pipe.transformer.cache_context("cond"):  # as FluxPipeline calls it
        out = pipe.transformer(**kwargs)[0]  # (n*T, tokens, 4c)
    h, w = xt.shape[-2:]
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
