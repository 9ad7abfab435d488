"""DAAM on diffusion transformers (SD3 / SD3.5, FLUX.1): word maps from the image->text view of joint attention.

    from analyses.daam import dit
    run = dit.generate(pipe, "a red square next to a blue circle", seed=0, steps=4)
    m = dit.word_map(run, pipe, "square")           # WordMap: .heat (H, W) in [0, 1], .encoders ('clip', 't5')
    g = dit.global_maps(run)                        # (text keys, h, w): every layer and head, steps summed, cond
    dit.global_maps(run, blocks="single", steps=[0], heads=[3])   # slices: needs generate(..., slices=True)

The published aggregation (Tang et al. 2023), adapted: every joint-attention layer's image->text view
(``<block>.attn:image->text``), heads averaged, summed over steps and layers. A DiT has one token grid, so nothing
is upsampled between layers; the word map is expanded (bicubic) to the image and min-max normalised, as for UNets.
Words are aligned to text keys through each encoder's own tokenizer: SD3's keys are the CLIP window (77 positions,
both CLIPs' states side by side) then T5's (max_sequence_length), Flux's are T5's alone. A word's map is the mean of
its keys in every window that holds it; ``WordMap.encoders`` says which did, and a word past one window (CLIP's 75
prompt tokens, or T5's max_sequence_length - 1) is mapped from the other, as ``WordMap.note`` says.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lab.hooks import Cache, Keep, points, trace
from lab.hooks.dit import family

from .maps import expand
from .words import WORD, words

TOKENIZERS = {"sd3": {"clip": "tokenizer", "t5": "tokenizer_3"}, "flux": {"t5": "tokenizer_2"}}


@dataclass
class Run:
    """What dit.generate returns: the images (N, H, W, 3) uint8, the published maps, and the slices if asked."""

    images: np.ndarray
    prompts: list[str]
    cache: Cache  # image->text views: steps summed, heads averaged (every head with heads=True), cond branch
    slices: Cache | None = None  # every step as well (slices=True)


@dataclass(frozen=True)
class WordMap:
    """A word's map: heat (H, W) in [0, 1]; encoders: the text encoders whose windows hold the word; keys: the text
    keys averaged; note: why an encoder is missing, or ''."""

    heat: torch.Tensor
    encoders: tuple[str, ...]
    keys: tuple[int, ...]
    note: str = ""


def layers(pipe, blocks=None) -> list[str]:
    """The image->text views of a DiT's joint-attention layers, forward order; blocks: 'double' | 'single' or both."""
    wanted = (blocks,) if isinstance(blocks, str) else (tuple(blocks) if blocks is not None else ("double", "single"))
    bad = [b for b in wanted if b not in ("double", "single")]
    if bad:
        raise ValueError(f"blocks={blocks!r}; valid: 'double', 'single' (Flux's single-stream blocks)")
    return [p.name for p in points(pipe) if p.kind == "image->text" and p.block in wanted]


def generate(pipe, prompt, seed: int = 0, steps: int = 28, guidance: float | None = None, size: int | None = None,
             slices: bool = False, heads: bool = False, max_bytes: int = 2**31, **kwargs) -> Run:
    """Run the pipeline once under a trace of every image->text view; ``kwargs`` go to the pipeline.

        run = generate(pipe, "a dog on a mat", seed=0, steps=28, size=1024, max_sequence_length=256)

    Memory (float32): 4 * batch * image tokens * text keys per layer (SD3-medium at 1024 px with 333 keys: 24 layers
    x 5.2 MiB = 125 MiB), times the heads with heads=True (2.9 GiB: over the default max_bytes, refused before step 0
    with a Keep that fits); slices=True keeps that per step too.
    """
    if family(getattr(pipe, "transformer", None) or pipe) not in TOKENIZERS:
        raise ValueError(f"{type(pipe).__name__} is not an SD3 or Flux pipeline; for UNets use daam.generate")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    names = layers(pipe)
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if size is not None:
        kwargs.update(height=size, width=size)
    g = torch.Generator().manual_seed(seed)
    mode = "all" if heads else "mean"
    published = trace(pipe, names, keep=Keep(steps="sum", heads=mode, branches=("cond",)), max_bytes=max_bytes)
    every = trace(pipe, names, keep=Keep(steps="all", heads=mode, branches=("cond",)), max_bytes=max_bytes
                  ) if slices else None
    with published:
        if every is None:
            out = pipe(prompts, num_inference_steps=steps, generator=g, output_type="np", **kwargs)
        else:
            with every:
                out = pipe(prompts, num_inference_steps=steps, generator=g, output_type="np", **kwargs)
    images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
    return Run(images, prompts, published.cache, every.cache if every is not None else None)


def global_maps(run: Run, batch: int = 0, steps=None, heads=None, blocks=None, layers_=None) -> torch.Tensor:
    """(text keys, h, w): the image->text maps summed over steps and layers, heads averaged, of prompt `batch`.

    steps (step indices), heads (head indices), blocks ('double' | 'single') and layers_ (names) slice it; steps
    need generate(..., slices=True), heads generate(..., heads=True).
    """
    cache = run.cache
    if steps is not None:
        if run.slices is None:
            raise ValueError("steps= needs the per-step maps: generate(..., slices=True)")
        cache = run.slices
    names = list(layers_ or cache)
    if blocks is not None:
        wanted = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        names = [n for n in names if ("single" if n.startswith("single_") else "double") in wanted]
    if not names:
        raise ValueError(f"no layer matches blocks={blocks!r}, layers_={layers_!r}; layers: {', '.join(cache)}")
    h, w = cache.resolution(names[0])
    total = None
    for name in names:
        x = cache.take(name, branch="cond", batch=batch)  # ([step,] head, query, key)
        if steps is not None:
            kept = cache.meta["steps"]
            x = x[[kept.index(s) for s in steps]].sum(0)  # (head, query, key)
        if "head" in cache.axes[name]:
            x = (x if heads is None else x[list(heads)]).mean(-3)  # (query, key)
        elif heads is not None:
            raise ValueError("heads= needs every head kept: generate(..., heads=True)")
        total = x if total is None else total + x
    return total.T.reshape(-1, h, w)  # (keys, h, w)


def align(run: Run, pipe, word: str, batch: int = 0) -> tuple[dict[str, list[int]], dict[str, str]]:
    """{encoder: text keys of `word`} for each encoder window that holds it, and {encoder: why not} for the others."""
    prompt = run.prompts[batch] if batch < len(run.prompts) else run.prompts[0]
    query = [m.group().lower() for m in WORD.finditer(word)]
    found, missing = {}, {}
    for segment in run.cache.meta["context"]:
        encoder, (start, stop) = segment["encoder"], segment["keys"]
        tok = getattr(pipe, TOKENIZERS[family(pipe.transformer)][encoder])
        ws = words(tok, prompt)
        texts = [w.text.lower() for w in ws]
        hits = [i for i in range(len(texts) - len(query) + 1) if query and texts[i:i + len(query)] == query]
        if not hits:
            raise ValueError(f"word {word!r} is not in the prompt {prompt!r}; words: {', '.join(w.text for w in ws)}")
        last = stop - start - 2  # CLIP: 1..75 after its start token; T5: 0..L-2 before its end token
        tokens = [t for i in hits for w in ws[i:i + len(query)] for t in w.tokens]  # positions in this window
        if tokens and max(tokens) <= last:
            found[encoder] = [start + t for t in tokens]
        else:
            missing[encoder] = (f"{word!r} is past the {encoder.upper()} window ({stop - start} keys; its tokens are "
                                f"at {', '.join(map(str, tokens))})")
    return found, missing


def word_map(run: Run, pipe, word: str, batch: int = 0, size=None, **slices) -> WordMap:
    """The map of `word` (or a phrase) in [0, 1] at the image size: the mean of its keys in every encoder window that
    holds it; **slices go to global_maps (steps, heads, blocks, layers_)."""
    found, missing = align(run, pipe, word, batch)
    if not found:
        raise ValueError(f"{word!r} is in no text encoder's window: {'; '.join(missing.values())}; shorten the prompt "
                         "or raise max_sequence_length")
    g = global_maps(run, batch, **slices)  # (keys, h, w)
    keys = [k for ks in found.values() for k in ks]
    heat = expand(g[keys].mean(0), size or tuple(run.images.shape[1:3]))  # (H, W)
    note = "; ".join(f"mapped without {e.upper()}: {why}" for e, why in missing.items())
    return WordMap(heat, tuple(found), tuple(keys), note)
