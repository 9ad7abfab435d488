"""Perturbed-attention guidance on diffusion transformers (SD3 / SD3.5, FLUX.1): the perturbation of a joint-attention
layer, the layer choice and the flow-matching loop. analyses.pag.guidance sends a DiT pipeline here.

    >>> from analyses import pag
    >>> pag.layers(sd3_pipe, "mid")                    # ['transformer_blocks.1.attn'] on a 3-block SD3
    >>> images = pag.generate(sd3_pipe, ["a red square"], [0], steps=4, guidance=5.0, pag_scale=3.0)  # (1, H, W, 3)

image_identity(image_first)   the edit of a 'joint' point: perturbed image queries see only themselves and the text
layers(pipe, choice)          joint-attention point names of 'mid' | 'all' | block names | point names
generate(pipe, prompts, seeds, steps, guidance, pag_scale, names, height, width, max_sequence_length)

What is perturbed. diffusers' StableDiffusion3PAGPipeline (PAGJointAttnProcessor2_0) runs the perturbed rows with a
mask on the joint softmax: an image query's scores to every other image key are -inf, to itself and to every text
key they stay; text queries are unmasked. The softmax over the keys left is the layer's own probabilities p
restricted to them and renormalised, so the edit here writes, on the 'perturbed' rows, for each image query i:
p[i, i] and p[i, text] divided by their sum, zeros elsewhere among the image keys; text queries keep their rows. It
is an edit of the whole map (point kind 'joint', ``transformer_blocks.i.attn``) because the renormalisation needs
both the image->image and the image->text parts of a row. SD3.5's second, image-only attention (``attn2``) is not
perturbed. Layer order: SD3 [image, text], Flux [text, image] (lab.hooks.dit).

FLUX.1. The double-stream blocks are the same joint attention with the text first; a single-stream block runs it on
the concatenated [text, image] sequence, so its image rows are perturbed the same way. PAG needs no unconditional
branch: v = cond + pag_scale * (cond - perturbed). ``guidance`` is FLUX.1-dev's embedded guidance (as
``pipe(..., guidance_scale=guidance)``, whose default is 3.5, where generate's is 0; schnell has none and ignores
it), never a classifier-free branch. diffusers
has no Flux PAG; tests hold the perturbed layers to Flux's own processor run with diffusers' SD3 PAG mask.

Layers: 'mid' is the middle joint-attention layer in forward order (index len // 2 of every double- then
single-stream one): on a 3-block SD3, block 1, StableDiffusion3PAGPipeline's default ``blocks.1``; on SD3-medium's
24 blocks, block 12 (diffusers' example perturbs 13); on FLUX.1's 19 + 38, single_transformer_blocks.9. 'all': every
joint layer.

The loop is the pipeline's own, step for step (encode_prompt, prepare_latents, the scheduler's timesteps through
diffusers' retrieve_timesteps and calculate_shift, the VAE's scaling and shift), so at pag_scale 0 its images equal
``pipe(...)``'s exactly; with pag_scale != 0 the conditional rows ride once more as a third branch, in one
transformer call: [uncond, cond, perturbed] with CFG (SD3, guidance > 1), [cond, perturbed] without.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from lab.hooks import select, trace
from lab.pipes import family_of

from .guidance import combine

DIT_GROUPS = ("mid", "all")


def image_identity(image_first: bool) -> Callable:
    """Edit for a joint-attention map (kind 'joint', (B, heads, S, S), S = image + text tokens in layer order; SD3's
    image tokens first, Flux's last): on the 'perturbed' rows (on every row when the batch has no such branch) each
    image query keeps only its own image key and the text keys, renormalised; text queries are left as they are."""

    def edit(probs: torch.Tensor, ctx) -> torch.Tensor:  # probs: (B, heads, S, S)
        if ctx.resolution is None or probs.shape[-1] != probs.shape[-2]:
            raise ValueError(f"image_identity edits a joint-attention map (kind 'joint'); {ctx.point!r} gave "
                             f"{tuple(probs.shape)} with image grid {ctx.resolution}")
        n_image, total = ctx.resolution[0] * ctx.resolution[1], probs.shape[-1]
        if n_image >= total:
            raise ValueError(f"{ctx.point!r} has {total} tokens and an image grid of {n_image}: no text keys, so it "
                             "is not a joint-attention map")
        image = slice(0, n_image) if image_first else slice(total - n_image, total)
        out = probs.clone()  # (B, heads, S, S)
        rows = out[ctx.rows("perturbed")] if "perturbed" in ctx.branches else out  # (b, heads, S, S), a view
        queries = rows[:, :, image]  # (b, heads, I, S), a view: the image queries' rows
        own = queries[..., image].diagonal(dim1=-2, dim2=-1).clone()  # (b, heads, I): p[i, i]
        queries[..., image] = 0
        queries[..., image].diagonal(dim1=-2, dim2=-1).copy_(own)
        queries /= queries.sum(-1, keepdim=True)  # p[i, i] and p[i, text] now sum to 1
        return out

    return edit


def layers(pipe, choice: str | Sequence[str] = "mid") -> list[str]:
    """Joint-attention point names (``transformer_blocks.i.attn``, Flux also ``single_transformer_blocks.i.attn``)
    that `choice` names: 'mid', 'all', block names, point names, or a list of those (forward order, no repeats)."""
    items = [choice] if isinstance(choice, str) else list(choice)
    every = select(pipe, kind="joint")  # forward order: double-stream blocks, then single-stream ones
    blocks = {name.removesuffix(".attn"): name for name in every}
    if not items:
        raise ValueError(f"no layers chosen; choose from: {', '.join(DIT_GROUPS)}, or blocks such as {every[0]}")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(every)
        elif item == "mid":
            chosen.add(every[len(every) // 2])
        elif item in every or item in blocks:
            chosen.add(blocks.get(item, item))
        else:
            raise ValueError(f"layer {item!r} is not a joint-attention layer of this {type(pipe.transformer).__name__};"
                             f" valid: {', '.join(DIT_GROUPS)}, or one of: {', '.join(blocks)} (or those with .attn)")
    return [n for n in every if n in chosen]


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, pag_scale: float,
             names: list[str], height: int | None = None, width: int | None = None,
             max_sequence_length: int | None = None) -> np.ndarray:
    """(n, H, W, 3) float images in [0, 1], as ``pipe(..., output_type="np")``; see the module docstring. `names`:
    the joint-attention points to perturb (layers()); checked by the caller."""
    fam, transformer, device, n = family_of(pipe), pipe.transformer, pipe._execution_device, len(prompts)
    cfg = fam == "sd3" and guidance > 1
    default = pipe.default_sample_size * pipe.vae_scale_factor
    height, width = height or default, width or default
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # the user's scheduler is left as it is

    # 1. Text: [uncond, cond] rows with CFG, [cond] without; Flux also its text ids
    layout = ("uncond", "cond") if cfg else ("cond",)
    text, pooled, kw = _conditioning(pipe, prompts, device, cfg, max_sequence_length)  # (rows, T, d), (rows, d)

    # 2. Starting noise (Flux: packed 2x2 latents and their ids), then the timesteps for that many image tokens
    if fam == "sd3":
        latents = pipe.prepare_latents(n, transformer.config.in_channels, height, width, text.dtype, device,
                                       gens)  # (n, c, h, w)
        p = transformer.config.patch_size
        tokens = (latents.shape[-2] // p) * (latents.shape[-1] // p)
    else:
        latents, kw["img_ids"] = pipe.prepare_latents(n, transformer.config.in_channels // 4, height, width,
                                                      text.dtype, device, gens)  # (n, I, 4c), (I, 3)
        tokens = latents.shape[1]
    timesteps = _timesteps(fam, scheduler, steps, device, tokens)

    # 3. The perturbed rows: the conditional ones again
    if pag_scale:
        layout += ("perturbed",)
        text, pooled = torch.cat([text, text[-n:]]), torch.cat([pooled, pooled[-n:]])  # (rows + n, ...)
    rows = n * len(layout)
    if fam == "flux" and transformer.config.guidance_embeds:
        kw["guidance"] = torch.full([1], guidance, device=device, dtype=torch.float32).expand(rows)  # (rows,)
    edit = image_identity(image_first=fam == "sd3")
    perturb = (trace(transformer, [], edits={name: edit for name in names}, branches=layout) if pag_scale
               else contextlib.nullcontext())
    with perturb:
        for t in timesteps:
            # 4. One transformer call on every branch
            x = torch.cat([latents] * len(layout))  # (rows, c, h, w) or (rows, I, 4c)
            tt = t.expand(rows) if fam == "sd3" else t.expand(rows).to(x.dtype) / 1000  # Flux takes sigma
            v = transformer(hidden_states=x, timestep=tt, encoder_hidden_states=text, pooled_projections=pooled,
                            return_dict=False, **kw)[0]  # velocities, x's shape
            v = combine(dict(zip(layout, v.chunk(len(layout)))), guidance, pag_scale)  # (n, ...)
            # 5. One Euler step
            latents = scheduler.step(v, t, latents, return_dict=False)[0]

    if fam == "flux":
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # (n, c, h, w)
    vae = pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")  # (n, H, W, 3)


def _conditioning(pipe, prompts, device, cfg: bool, max_sequence_length: int | None):
    """(text (rows, T, d), pooled (rows, d), extra transformer keywords) as the pipeline builds them."""
    length = {} if max_sequence_length is None else {"max_sequence_length": int(max_sequence_length)}
    if family_of(pipe) == "flux":
        text, pooled, text_ids = pipe.encode_prompt(prompts, None, device=device, **length)  # (n, T, d), (n, d)
        return text, pooled, {"txt_ids": text_ids}
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(prompts, None, None, device=device,
                                                             do_classifier_free_guidance=cfg, **length)
    if cfg:
        return torch.cat([uncond, cond]), torch.cat([uncond_pooled, pooled]), {}
    return cond, pooled, {}


def _timesteps(fam: str, scheduler, steps: int, device, tokens: int) -> torch.Tensor:
    """The pipeline's timesteps: Flux its sigmas linspace(1, 1/steps) shifted by mu for `tokens` image tokens; SD3
    the scheduler's own (mu only where the scheduler shifts dynamically)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    c = scheduler.config
    kwargs = {}
    if fam == "flux" or c.get("use_dynamic_shifting"):
        kwargs["mu"] = calculate_shift(tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                       c.get("base_shift", 0.5), c.get("max_shift", 1.15 if fam == "flux" else 1.16))
    if fam == "flux" and not c.get("use_flow_sigmas"):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(scheduler, steps, device, **kwargs)
    if fam == "flux":
        scheduler.set_begin_index(0)
    return timesteps
