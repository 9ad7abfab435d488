"""DIFT on diffusion transformers (SD3 / SD3.5, FLUX.1): flow-matching noise, the pipelines' conditioning, and the
transformer call whose block outputs features.py reads.

    fmaps = featurize(sd3, "cat.jpg", t=261, block="transformer_blocks.12", size=1024)   # features.py, as for UNets
    cond = condition(flux, ["a photo of a cat"])       # encoder_hidden_states, pooled_projections
    kw = call(flux, z0, noise, t=261, cond=cond)       # the transformer's keyword arguments at timestep t

Flow matching noises a latent as x_t = (1 - sigma) x_0 + sigma * noise with sigma = t / num_train_timesteps: the
relation FlowMatchEulerDiscreteScheduler keeps between its timesteps and its sigmas (shifted or not, the model is
conditioned on t = 1000 sigma), so t means the same for SD3 and Flux as the timestep their pipelines pass. The
latents are the VAE's, shifted and scaled as the pipelines decode them; Flux's are packed 2x2 into tokens with their
img_ids. A block's features are its image tokens on the token grid, (channel, h, w) (lab.hooks reads them so).
FLUX.1-dev's guidance embedding gets the pipeline's default, 3.5; schnell has none.
"""
from __future__ import annotations

import torch

from lab.hooks.dit import family
from lab.hooks.points import denoiser_of

FLUX_GUIDANCE = 3.5


def is_dit(pipe) -> bool:
    return family(denoiser_of(pipe)) != "unet"


def size_multiple(pipe) -> int:
    """Pixels per token side: vae_scale_factor * patch (SD3's patch_size, Flux's 2x2 packing): 16 for both."""
    dit = denoiser_of(pipe)
    patch = dit.config.patch_size if family(dit) == "sd3" else 2
    return int(pipe.vae_scale_factor) * int(patch)


def native_size(pipe) -> tuple[int, int]:
    """SD3: transformer.config.sample_size * vae_scale_factor (1024 for SD3-medium); Flux: 1024."""
    s = denoiser_of(pipe).config.get("sample_size")
    if s is None:
        return (1024, 1024)
    return (int(s) * int(pipe.vae_scale_factor),) * 2


@torch.no_grad()
def condition(pipe, prompts, max_sequence_length: int | None = None) -> dict:
    """Transformer keyword arguments of one row per prompt: encoder_hidden_states (N, tokens, dim) and
    pooled_projections (N, pooled), from the pipeline's own encode_prompt (SD3: both CLIPs and T5; Flux: T5 and
    CLIP's pooled vector), at its default max_sequence_length unless given."""
    dit = denoiser_of(pipe)
    device = getattr(pipe, "_execution_device", None) or dit.device
    unique = list(dict.fromkeys(prompts))
    if family(dit) == "flux":
        emb, pooled, _ = pipe.encode_prompt(unique, None, device=device, max_sequence_length=max_sequence_length or 512)
    else:
        emb, _, pooled, _ = pipe.encode_prompt(unique, None, None, device=device, do_classifier_free_guidance=False,
                                               max_sequence_length=max_sequence_length or 256)
    rows = torch.tensor([unique.index(p) for p in prompts], device=device)
    return {"encoder_hidden_states": emb[rows].to(dit.dtype), "pooled_projections": pooled[rows].to(dit.dtype)}


def noised(z0: torch.Tensor, noise: torch.Tensor, t: int, total: int) -> torch.Tensor:
    """x_t = (1 - sigma) x_0 + sigma * noise, sigma = t / total: (b, c, h, w)."""
    sigma = t / total
    return (1 - sigma) * z0 + sigma * noise  # (b, c, h, w)


def call(pipe, z0: torch.Tensor, noise: torch.Tensor, t: int, cond: dict) -> dict:
    """The transformer's keyword arguments for latents z0 (b, c, h, w) noised with `noise` at timestep t."""
    dit = denoiser_of(pipe)
    total = int(pipe.scheduler.config.num_train_timesteps)
    device, dtype = z0.device, dit.dtype
    zt = noised(z0, noise.to(device), t, total).to(dtype)  # (b, c, h, w)
    b, c, h, w = zt.shape
    timestep = torch.full((b,), float(t), device=device, dtype=dtype)
    kw = dict(cond, return_dict=False)
    if family(dit) == "sd3":
        return dict(kw, hidden_states=zt, timestep=timestep)
    if h % 2 or w % 2:
        raise ValueError(f"Flux packs 2x2 latents; a {h}x{w} latent cannot be packed (use a size multiple of 16)")
    packed = pipe._pack_latents(zt, b, c, h, w)  # (b, h/2 * w/2, 4c)
    ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)  # (h/2 * w/2, 3): (0, row, column)
    text = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=device, dtype=dtype)  # txt_ids
    guidance = (torch.full((b,), FLUX_GUIDANCE, device=device, dtype=torch.float32)
                if dit.config.get("guidance_embeds") else None)
    return dict(kw, hidden_states=packed, timestep=timestep / 1000, guidance=guidance, txt_ids=text, img_ids=ids)
