"""Which kind of pipeline a lab function was given, asked in one place: the notebooks' widgets and the analyses they
call ask here whether a pipeline runs a UNet or a diffusion transformer (SD3 / SD3.5, FLUX.1), and refuse by name
what has no DiT meaning yet.

    family_of(pipe)        # 'unet' (SD 1.x / 2.x / SDXL, the built-in models), 'sd3' or 'flux'
    unet_only(pipe, "low_resolution_blocks", "a transformer's blocks all work on one token grid")
                           # NotImplementedError on an SD3 / Flux pipeline, naming its class and what is supported
"""
from __future__ import annotations

UNET_PIPELINES = "StableDiffusionPipeline / StableDiffusionXLPipeline (SD 1.x, 2.x, SDXL and the built-in models)"


def family_of(pipe) -> str:
    """'unet', 'sd3' or 'flux': the denoiser family of a pipeline (or of a denoiser); anything else is refused by
    lab.hooks.points.denoiser_of with the supported ones."""
    from .hooks.dit import family
    from .hooks.points import denoiser_of

    return family(denoiser_of(pipe))


def unet_only(pipe, method: str, why: str) -> None:
    """Refuse a diffusion-transformer pipeline for a `method` whose UNet recipe has no DiT counterpart here yet;
    `why` says what the method needs that a DiT lacks. Returns None for a UNet pipeline."""
    fam = family_of(pipe)
    if fam != "unet":
        raise NotImplementedError(
            f"{method} is not available on {type(pipe).__name__} ({'SD3' if fam == 'sd3' else 'FLUX.1'}, a diffusion "
            f"transformer): {why}. It runs on {UNET_PIPELINES}")
