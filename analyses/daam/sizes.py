"""How many bytes a DAAM capture keeps, predicted from the UNet's points without running it.

    capture_bytes(pipe, 1024, steps=25, prompt="a dog on a mat", slices=True, mid=True, tokens="prompt")
    capture_sizes(unet, 512, steps=25, slices=True)     # {"cache": ..., "slices": ...} bytes per view
    with torch.device("meta"):                           # a real-size UNet costs nothing to build on `meta`
        unet = UNet2DConditionModel(**config)

The prediction is the bytes of the caches the capture returns (lab.hooks.keep's step_shape per point, times the
steps kept), so ``sum(t.nbytes for t in cache.values())`` of each view equals it.
"""
from __future__ import annotations

from typing import Sequence

from lab.hooks import points
from lab.hooks.keep import human, nbytes, step_shape
from lab.hooks.dit import default_text_tokens, family
from lab.hooks.points import denoiser_of

from .views import Options, View, prompt_positions, published_keep, views
from .words import tokenizer_of

KEYS = 77  # CLIP's text length: the keys of every cross-attention layer


def capture_sizes(model, image_size=None, steps: int = 25, prompt: str | Sequence[str] | None = None,
                  batch: int | None = None, guidance: bool = True, mid: bool = False, layers=None,
                  keys: int | None = None, keep=None, **options) -> dict[str, int]:
    """Bytes each view of ``capture(model, prompt, mid=mid, layers=layers, **options)`` keeps, by role.

        capture_sizes(pipe, 512, steps=25, prompt="a red circle", slices=True)  # {"cache": 8.6e6, "slices": ...}

    model: a pipeline or its UNet (a UNet on the meta device works), or an SD3 / Flux pipeline or transformer.
    image_size: pixels, int or (h, w) (default the model's: sample_size * vae_scale_factor; 1024 for Flux). steps:
    the pipeline's inference steps. prompt: needed for tokens="prompt" (or give tokens as positions); batch: images
    per call (default one per prompt, else 1). guidance: classifier-free guidance on (two branches; Flux has one).
    keys: text tokens (default the tokenizer's length, 77; a DiT's at the pipeline's defaults: SD3 77 + 256, Flux
    512). keep: capture()'s keep (another Keep for the published view). options: capture()'s (slices, queries,
    query_steps, head_layers, head_steps, tokens, dtype).
    """
    from .capture import daam_layers

    opts = Options(**options)
    denoiser = denoiser_of(model)
    fam = family(denoiser)
    vsf = getattr(model, "vae_scale_factor", None) or 8
    if image_size is None:
        image_size = denoiser.config.get("sample_size", 128) * vsf
    prompts = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
    batch = batch if batch is not None else (len(prompts) if prompts else 1)
    if fam != "unet" and opts.queries:
        raise NotImplementedError(_NO_QUERIES)
    tokenizer = _tokenizer(model)
    if keys is None and fam != "unet":
        keys = default_text_tokens(denoiser, model if model is not denoiser else None)
    if keys is None:
        keys = int(getattr(tokenizer, "model_max_length", KEYS) or KEYS) if tokenizer is not None else KEYS
    positions = token_positions(opts, tokenizer, prompts, model if fam != "unet" else None, keys)
    names = list(layers) if layers is not None else daam_layers(model, mid)
    pts = {p.name: p for p in points(denoiser, image_size, vsf, text_tokens=keys if fam != "unet" else None)}
    if keep is None and fam != "unet":
        keep = published_keep(dit=True)
    layout = 2 if guidance and fam != "flux" else 1
    return {v.role: view_bytes(v, pts, steps, layout, batch, keys) for v in views(names, opts, positions, keep)}


def capture_bytes(model, image_size=None, steps: int = 25, **kwargs) -> int:
    """Total bytes of a capture: the sum of capture_sizes(model, image_size, steps, **kwargs).

        capture_bytes(pipe, 1024, steps=25, prompt=PROMPT, **explorer_options(25))   # <= 2 GiB for SDXL
    """
    return sum(capture_sizes(model, image_size, steps, **kwargs).values())


def describe(sizes: dict[str, int]) -> str:
    """'1.2 GiB (cache 479.6 MiB, slices 676.1 MiB)'."""
    return f"{human(sum(sizes.values()))} ({', '.join(f'{k} {human(v)}' for k, v in sizes.items())})"


def view_bytes(view: View, pts: dict, steps: int, layout: int, batch: int, keys: int) -> int:
    """Bytes one view keeps over a run of `steps` steps, `layout` branches (1 or 2) and `batch` images."""
    keep = view.keep
    n_branches = min(len(keep.branches), layout)
    if keep.step_mode == "all":
        slots = steps
    elif keep.step_mode == "list":
        slots = len({s + steps if s < 0 else s for s in keep.steps})
    else:
        slots = 1
    total = 0
    for name in view.names:
        p = pts[name]
        k = keys if p.kind in ("attn2", "image->text") or p.reads_text() else p.resolution[0] * p.resolution[1]
        shape = step_shape(p.kind, keep, n_branches, batch, p.heads, p.resolution, k, p.channels)
        total += nbytes(shape, keep.dtype)
    return total * slots


def token_positions(opts: Options, tokenizer, prompts, dit_pipe=None, keys: int | None = None) -> list[int] | None:
    """The key positions the slices and heads views keep (None: every key). dit_pipe: an SD3 / Flux pipeline, whose
    prompt positions are in each text window (keys: its text keys, for the T5 window's length)."""
    if opts.tokens is None:
        return None
    if opts.tokens != "prompt":
        return list(opts.tokens)
    if dit_pipe is not None and prompts:
        from .dit import window_positions

        clip = getattr(dit_pipe, "tokenizer_max_length", 77) if family(denoiser_of(dit_pipe)) == "sd3" else 0
        return window_positions(dit_pipe, prompts, None if keys is None else keys - clip)
    if not prompts or tokenizer is None:
        raise ValueError("tokens='prompt' needs the prompt(s) and a pipeline with a tokenizer: pass prompt=..., or "
                         "tokens= a list of key positions")
    return prompt_positions(tokenizer, prompts)


_NO_QUERIES = ("queries=True (open-vocabulary maps) is not available on diffusion transformers yet: their text keys "
               "come through add_k_proj and (Flux) rotary positions; capture without queries")


def _tokenizer(model):
    try:
        return tokenizer_of(model)
    except TypeError:
        return None
