"""Perturbed-attention guidance (Ahn et al., 2024) on lab.hooks: guide each step away from what the model predicts
when its chosen self-attention maps are the identity (every query attends only to itself).

    >>> import lab
    >>> from analyses.pag import generate
    >>> pipe = lab.load("shapes")
    >>> images = generate(pipe, ["a small red circle on a white background"], seeds=[0], steps=10, pag_scale=3.0,
    ...                   layers="mid")
    >>> images.shape
    (1, 128, 128, 3)

identity_attention(probs, ctx)   the edit: the 'perturbed' rows' (heads, q, q) probabilities -> the identity map
layers(pipe, choice)             self-attention (attn1) point names of 'down' | 'mid' | 'up' | 'all' or full names
groups(pipe)                     the layer groups `choice` may name on this pipeline (a DiT's: 'mid', 'all')
generate(pipe, prompts, seeds, steps, guidance, pag_scale, layers)   (n, H, W, 3) float images in [0, 1]
combine(predictions, guidance, pag_scale)   the guided prediction from {branch: prediction}

Why a loop here and not diffusers' StableDiffusionPAGPipeline: that pipeline perturbs with its own attention
processors, set on the UNet it is given (the user's, shared with their pipeline) and refused by lab.hooks, and it
exists per model family. The loop below is the pipeline's own, step for step (prompt encoding, latents, scheduler
step and decoding are the pipeline's methods), so at pag_scale 0 its images equal ``pipe(...)``'s exactly. With
pag_scale != 0 the conditional rows ride in the same UNet call once more, as a third branch: the batch is
[uncond, cond, perturbed] (with CFG; [cond, perturbed] without), told to ``trace(..., branches=...)``, and the
identity edit replaces the chosen layers' maps on the 'perturbed' rows only:

    eps = uncond + guidance * (cond - uncond) + pag_scale * (cond - perturbed)      (guidance > 1: with CFG)
    eps = cond + pag_scale * (cond - perturbed)                                     (guidance <= 1: without)

One call a step instead of two. In the chosen layers every row runs the eager attention math (lab.hooks edits do),
so uncond and cond differ from a separate unperturbed call in the last float bits (within tests/devices.py's
batch_close; test_pag holds it to a two-call reference). SD 1.x / 2.x and SDXL (its pooled text and size conditioning).

SD3 / SD3.5 and FLUX.1 go to analyses.pag.dit: the perturbation there is diffusers' SD3 PAG (image queries of the
chosen joint-attention layers attend only to themselves among the image keys, and to every text key), the loop is
the flow-matching pipeline's, and ``layers`` names joint-attention layers ('mid', 'all', ``transformer_blocks.i``).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from lab.hooks import select, trace
from lab.pipes import family_of

GROUPS = ("down", "mid", "up", "all")


def identity_attention(probs: torch.Tensor, ctx) -> torch.Tensor:  # probs: (B, heads, q, q)
    """Edit: each query attends only to its own position, so the layer's output at a position is its own value; on
    the rows of the batch's 'perturbed' branch when it has one, else on every row."""
    if probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"identity_attention needs self-attention (queries = keys); {ctx.point!r} has "
                         f"{probs.shape[-2]} queries and {probs.shape[-1]} keys")
    if "perturbed" not in ctx.branches:
        out = torch.zeros_like(probs)  # (B, heads, q, q)
        out.diagonal(dim1=-2, dim2=-1).fill_(1.0)
        return out
    out = probs.clone()  # (B, heads, q, q)
    rows = out[ctx.rows("perturbed")]  # (batch, heads, q, q), a view
    rows.zero_().diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return out


def layers(pipe, choice: str | Sequence[str] = "mid") -> list[str]:
    """Full names of the self-attention layers `choice` names: 'down', 'mid', 'up', 'all', attn1 point names, or a
    list of those (forward order, no repeats). On SD3 / Flux: joint-attention layers (analyses.pag.dit.layers)."""
    if family_of(pipe) != "unet":
        from . import dit

        return dit.layers(pipe, choice)
    items = [choice] if isinstance(choice, str) else list(choice)
    every = select(pipe, kind="attn1")
    if not items:
        raise ValueError(f"no layers chosen; choose from: {', '.join(GROUPS)}, or attn1 names such as {every[0]}")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(every)
        elif item in GROUPS:
            chosen.update(select(pipe, kind="attn1", block=item))
        elif item in every:
            chosen.add(item)
        else:
            raise ValueError(f"layer {item!r} is not a self-attention layer of this UNet; valid: "
                             f"{', '.join(GROUPS)}, or one of: {', '.join(every)}")
    return [n for n in every if n in chosen]


def groups(pipe) -> tuple[str, ...]:
    """The layer groups layers() takes on this pipeline: GROUPS on a UNet, ('mid', 'all') on SD3 / Flux."""
    if family_of(pipe) == "unet":
        return GROUPS
    from .dit import DIT_GROUPS

    return DIT_GROUPS


def combine(out: dict, guidance: float, pag_scale: float) -> torch.Tensor:
    """The guided prediction from {branch: (n, ...) prediction}: classifier-free guidance where there is an
    'uncond' branch, plus pag_scale * (cond - perturbed) where there is a 'perturbed' one."""
    eps = out["cond"]
    if "uncond" in out:
        eps = out["uncond"] + guidance * (out["cond"] - out["uncond"])  # (n, ...)
    if "perturbed" in out:
        eps = eps + pag_scale * (out["cond"] - out["perturbed"])  # (n, ...)
    return eps


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = 25, guidance: float = 0.0,
             pag_scale: float = 3.0, layers: str | Sequence[str] = "mid", height: int | None = None,
             width: int | None = None, max_sequence_length: int | None = None) -> np.ndarray:
    """(n, H, W, 3) float images in [0, 1] (as ``pipe(..., output_type="np")``), prompt i from seed i; with
    guidance > 1 classifier-free guidance as the pipeline does it, plus pag_scale times (cond - perturbed).
    SD3 / Flux: see analyses.pag.dit (max_sequence_length: their T5 window, the pipeline's default if None; on
    FLUX.1 `guidance` is dev's embedded guidance, not a CFG branch)."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
    names = _layers(pipe, layers)  # checked also at scale 0, so a bad choice is never silently ignored
    if family_of(pipe) != "unet":
        from . import dit

        return dit.generate(pipe, prompts, seeds, steps, guidance, pag_scale, names, height, width,
                            max_sequence_length)
    if max_sequence_length is not None:
        raise ValueError(f"max_sequence_length={max_sequence_length}: it is SD3's / Flux's T5 window; "
                         f"{type(pipe).__name__} reads its CLIP tokenizer's window")
    unet, device = pipe.unet, pipe._execution_device
    n, cfg = len(prompts), guidance > 1
    height = height or unet.config.sample_size * pipe.vae_scale_factor
    width = width or unet.config.sample_size * pipe.vae_scale_factor
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # the user's scheduler is left as it is

    # 1. Text: [uncond, cond] rows with guidance, [cond] without, then the cond rows again for 'perturbed'; SDXL adds
    #    pooled text and size ids
    layout = ("uncond", "cond") if cfg else ("cond",)
    text, added = _conditioning(pipe, prompts, device, cfg, height, width)  # (rows, tokens, d), {name: (rows, ...)}
    if pag_scale:
        layout += ("perturbed",)
        text = torch.cat([text, text[-n:]])  # (rows + n, tokens, d)
        added = {k: torch.cat([v, v[-n:]]) for k, v in added.items()}

    # 2. Timesteps and starting noise, as the pipeline makes them
    scheduler.set_timesteps(steps, device=device)
    latents = pipe.prepare_latents(n, unet.config.in_channels, height, width, text.dtype, device, gens)  # (n, c, h, w)
    extra = _step_kwargs(scheduler, gens)

    # 3. The perturbed rows: the chosen self-attention maps replaced by the identity (no trace at scale 0)
    perturb = (trace(unet, [], edits={name: identity_attention for name in names}, branches=layout) if pag_scale
               else contextlib.nullcontext())
    with perturb:
        for t in scheduler.timesteps:
            # 4. One UNet call on every branch
            x = scheduler.scale_model_input(torch.cat([latents] * len(layout)), t)  # (rows, c, h, w)
            eps = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added or None, return_dict=False)[0]
            eps = combine(dict(zip(layout, eps.chunk(len(layout)))), guidance, pag_scale)  # (n, c, h, w)
            # 5. One scheduler step
            latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]  # (n, c, h, w)

    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=gens)[0]
    return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * n)  # (n, H, W, 3)


def _layers(pipe, choice) -> list[str]:
    return layers(pipe, choice)


def _conditioning(pipe, prompts, device, cfg: bool, height: int, width: int):
    """(text (rows, tokens, d), added_cond_kwargs) with rows [uncond, cond] when cfg, as the pipeline builds them."""
    if not hasattr(pipe, "text_encoder_2"):
        cond, uncond = pipe.encode_prompt(prompts, device, 1, cfg)  # each (n, tokens, d)
        return (torch.cat([uncond, cond]) if cfg else cond), {}
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                             do_classifier_free_guidance=cfg)
    proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
    ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                 text_encoder_projection_dim=proj).to(device).repeat(len(prompts), 1)  # (n, 6)
    if cfg:
        return torch.cat([uncond, cond]), {"text_embeds": torch.cat([uncond_pooled, pooled]),
                                           "time_ids": torch.cat([ids, ids])}
    return cond, {"text_embeds": pooled, "time_ids": ids}


def _step_kwargs(scheduler, generator) -> dict:
    """The scheduler.step keywords the pipeline passes (eta=0 for DDIM, the generator where it takes one)."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in params}
