"""Capture what DAAM needs during an ordinary pipeline call: cross-attention maps, and optionally the queries.

    with capture(pipe, "a dog on a mat") as cap:                    # the published method: steps summed, cond only
        image = pipe("a dog on a mat", generator=torch.Generator().manual_seed(0)).images[0]
    cap.cache                                                       # lab.hooks.Cache of every down/up attn2 layer
    run = generate(pipe, ["a red circle", "a blue square"], seed=0, steps=10, slices=True, queries=True)
    run.images, run.cache, run.slices, run.heads, run.queries       # images (N, H, W, 3) uint8 and the Caches
    run = generate(sd3_or_flux, "a red square", seed=0, steps=4)    # a DiT: the same call, its image->text views
    run = generate(flux, "a cat on grass", method="concept", concepts=["cat", "grass", "sky"])   # concept.py

capture(pipe, prompt, slices, mid, queries, query_steps, head_layers, head_steps, tokens, dtype, ...)
        context manager: one lab.hooks trace per view (analyses.daam.views), nested on the same layers
generate(pipe, prompt, seed, steps, guidance, ...) -> Run      runs the pipeline under capture
explorer_options(steps)       the notebook explorer's capture, which fits SDXL at 1024 px
daam_layers(pipe, mid=False)  the attn2 layers of the down and up blocks (and the mid block); on a DiT (SD3, Flux)
                              the image->text view of every joint-attention layer (dit.layers)
capture_bytes / capture_sizes (sizes.py)   what a capture keeps, predicted without running the model

A run keeps up to four caches. global_maps(run, ...) answers each slice from the cache that holds it exactly
(``cache`` or ``heads``) and else from ``slices`` (heads averaged first: see maps.global_maps):
  run.cache    published: steps summed, every head, cond branch. 4 * batch * heads * queries * 77 bytes per layer
               (SD1.5 at 512 px: 63 MiB with the mid block; SDXL at 1024 px: 0.45 GiB)
  run.slices   slices=True: every step, both branches, heads averaged, `tokens` keys, `dtype` storage.
               size(dtype) * 2 * batch * queries * keys bytes per layer per step (SD1.5 512, 25 steps, 77 keys:
               0.39 GiB in float32; SDXL 1024: 1.35 GiB in float32, 0.68 GiB in float16, 0.16 with 18 prompt keys)
  run.heads    head_steps / head_layers: every head, both branches, at those steps of those layers: `heads` times
               slices' bytes per step (SDXL 1024, one step, 18 prompt keys, float32: 0.21 GiB)
  run.queries  queries=True: size(dtype) * batch * queries * heads * head_dim bytes per layer per query step, cond
               (SD1.5 512: 46 MiB a step; SDXL 1024: 0.37 GiB a step in float32: pass query_steps= a few steps)
A capture whose caches would pass max_bytes (2 GiB) together is refused at the pipeline's first UNet call, before
any denoising, naming its size and the nearest options that fit, written to paste. Self-attention (attn1) is not
part of DAAM; at real size one layer is 4096 x 4096 per head at 64x64 latents (64 MiB per step in float32 with heads
averaged), so keep it with lab.hooks at a few chosen steps with heads averaged: Keep(steps=[...], heads="mean").

On a diffusion transformer (SD3 / SD3.5, FLUX.1) the layers are the image->text views of joint attention, on one
token grid, so the published view keeps heads averaged (exact there: see dit.py): 4 * batch * image tokens * text
keys per layer (SD3-medium at 1024 px, 333 keys: 24 x 5.2 MiB = 125 MiB); every head costs `heads` times that, so
per-head slices come from head_steps= as for UNets. queries=True is not available on DiTs yet.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from lab.hooks import Cache, Keep, select, trace
from lab.hooks.dit import grid_of, inputs
from lab.hooks.keep import human

from . import dit
from .sizes import _NO_QUERIES, capture_sizes, describe, token_positions
from .views import Options, published_keep, views
from .words import tokenizer_of

MAX_BYTES = 2**31
METHODS = ("daam", "concept")


def daam_layers(pipe, mid: bool = False) -> list[str]:
    """Full names of the cross-attention layers DAAM aggregates: down and up blocks, plus the mid block if `mid`;
    on a DiT every joint-attention layer's image->text view (`mid` does not apply: it has no mid block)."""
    if dit.is_dit(pipe):
        return dit.layers(pipe)
    return select(pipe, kind="attn2", block=("down", "mid", "up") if mid else ("down", "up"))


def method_keep(slices: bool = False) -> Keep:
    """The Keep of the published method (steps summed, every head, cond branch), or of the sliced view (every
    step, both branches, heads averaged)."""
    if slices:
        return Keep(steps="all", heads="mean", branches=("cond", "uncond"))
    return published_keep()


def explorer_options(steps: int, pipe=None) -> dict:
    """The capture the DAAM notebook's explorer uses: it fits SDXL at 1024 px (<= 2 GiB) and SD1.5 at 512 (<= 0.5).

        run = generate(pipe, prompt, steps=25, **explorer_options(25))
        run = generate(sd3, prompt, steps=28, **explorer_options(28, sd3))   # a DiT: no queries, no mid block

    Every step and branch with heads averaged, of the prompt's token positions only (slices=True, tokens='prompt');
    the mid block; the queries and every head at the middle step only (at real size each query step costs 0.37 GiB
    for SDXL), so open-vocabulary maps and head slices are exact there, and the heads of the summed published
    maps are always there. A DiT (pipe given) has no mid block and no queries yet: SD3-medium at 1024 px, 28 steps
    and 40 prompt keys keeps 1.6 GiB; FLUX.1 with 20 prompt keys 1.3 GiB (capture_sizes on a meta-device model).
    """
    middle = [steps // 2]
    if pipe is not None and dit.is_dit(pipe):
        return dict(slices=True, tokens="prompt", head_steps=middle)
    return dict(slices=True, mid=True, tokens="prompt", queries=True, query_steps=middle, head_steps=middle)


class Capture:
    """Context manager from ``capture(...)``; after the with-block ``.cache`` holds the published maps, ``.slices``
    / ``.heads`` / ``.queries`` the other views (None when not asked for)."""

    def __init__(self, pipe, prompt=None, slices: bool = False, mid: bool = False, queries: bool = False,
                 query_steps="all", layers=None, keep: Keep | None = None, max_bytes: int = MAX_BYTES,
                 meta: dict | None = None, head_layers=None, head_steps=None, tokens=None,
                 dtype: torch.dtype = torch.float32, max_sequence_length: int | None = None):
        self.pipe = pipe
        self.dit = dit.is_dit(pipe)
        if self.dit and queries:
            raise NotImplementedError(_NO_QUERIES)
        if self.dit and keep is None:
            keep = published_keep(dit=True)  # one grid: the mean is exact (module docstring)
        self.prompts = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
        self.layers = list(layers) if layers is not None else daam_layers(pipe, mid)
        self.options = Options(slices, queries, query_steps, head_layers, head_steps, tokens, dtype)
        self.max_bytes = int(max_bytes)
        clip = getattr(pipe, "tokenizer_max_length", 77) if hasattr(pipe, "text_encoder_3") else 0  # SD3's window
        keys = None if max_sequence_length is None else clip + max_sequence_length
        positions = token_positions(self.options, _tokenizer(pipe), self.prompts, pipe if self.dit else None, keys)
        info = {"prompts": self.prompts, "layers": self.layers}
        self.views = views(self.layers, self.options, positions, keep)
        self._traces = {v.role: trace(pipe, list(v.names), keep=v.keep, max_bytes=max_bytes,
                                      meta={"daam": {**info, "view": v.role}, **(meta or {})}) for v in self.views}
        self._entered: list = []
        self._hook = None
        self._keys: int | None = None  # a DiT's text keys, read at its first call
        self.cache: Cache | None = None
        self.slices: Cache | None = None
        self.heads: Cache | None = None
        self.queries: Cache | None = None

    def __enter__(self) -> "Capture":
        unet = self._traces["cache"].unet
        self._hook = unet.register_forward_pre_hook(self._check_budget, with_kwargs=True)  # runs before the traces'
        try:
            for role, tr in self._traces.items():
                tr.__enter__()
                self._entered.append(tr)
        except BaseException:
            self._leave(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._leave(exc_type, exc, tb)
        queries = self._traces.get("queries")
        if exc_type is MemoryError and queries is not None and queries.step >= 0 and "capture(" not in str(exc):
            raise MemoryError(f"{exc} For the queries: pass query_steps= a few step indices.") from exc
        if exc_type is None:
            for role, tr in self._traces.items():
                setattr(self, role, tr.cache)  # queries: (step, branch, batch, token, channel)
            self._check_prompts()
        return False

    def _leave(self, exc_type, exc, tb) -> None:
        try:
            while self._entered:
                self._entered.pop().__exit__(exc_type, exc, tb)  # innermost first
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    def _check_budget(self, module, args, kwargs) -> None:
        """At the first UNet call, refuse a capture whose caches would pass max_bytes together (before any step)."""
        tr = self._traces["cache"]
        if tr.step >= 0:
            return
        sample, _, text = inputs(tr.family, args, kwargs)  # UNet / SD3 (B, c, h, w); Flux (B, tokens, c)
        latent = tuple(sample.shape[-2:]) if not self.dit else grid_of(tr.denoiser, sample, args, kwargs)[1]
        keys = text.shape[1] if self.dit and torch.is_tensor(text) else None
        layout = tr.layout()
        scheduler = getattr(self.pipe, "scheduler", None)
        steps = getattr(self.pipe, "_num_timesteps", None) or (len(scheduler.timesteps) if scheduler else None)
        if not steps:
            return  # a bare UNet: each trace still checks its own keep
        self._keys = keys
        sizes = self.sizes(latent, steps, len(layout), sample.shape[0] // len(layout))
        if sum(sizes.values()) <= self.max_bytes:
            return
        fits = self._nearest_fit(latent, steps, len(layout), sample.shape[0] // len(layout))
        hint = " Nothing fits but fewer layers (layers=...)."
        if fits is not None:
            hint = (f" The nearest capture that fits: {_call(fits[0])} ({human(fits[1])})." if fits[0].kwargs() else
                    f" Only the published maps fit: capture(...) with none of these options ({human(fits[1])}).")
        raise MemoryError(f"this capture, {_call(self.options)}, of {len(self.layers)} layers over {steps} steps "
                          f"would keep {describe(sizes)}, over max_bytes={human(self.max_bytes)}.{hint} Or raise "
                          "max_bytes.")

    def sizes(self, latent, steps: int, layout: int, batch: int, options: Options | None = None) -> dict[str, int]:
        """Bytes each view keeps for a run of this latent size, steps, branches and batch (capture_sizes)."""
        vsf = getattr(self.pipe, "vae_scale_factor", None) or 8
        opts = dataclasses.asdict(options or self.options)
        return capture_sizes(self.pipe, (latent[0] * vsf, latent[1] * vsf), steps, self.prompts, batch, layout == 2,
                             layers=self.layers, keep=self.views[0].keep, keys=self._keys, **opts)

    def _nearest_fit(self, latent, steps, layout, batch) -> tuple[Options, int] | None:
        """The options that give up least and fit: float16 storage, the prompt's keys, one query step, one head
        step, then no queries, no per-head view, no slices."""
        o, middle = self.options, [steps // 2]
        moves = [dict(dtype=torch.float16) if o.dtype == torch.float32 else None,
                 dict(tokens="prompt") if o.tokens is None and self.prompts else None,
                 dict(query_steps=middle) if o.queries and o.query_steps != tuple(middle) else None,
                 dict(head_steps=middle) if o.heads and o.head_steps != tuple(middle) else None,
                 dict(queries=False, query_steps="all") if o.queries else None,
                 dict(head_steps=None, head_layers=None) if o.heads else None,
                 dict(slices=False, dtype=torch.float32, tokens=None) if o.slices else None]
        moves = [m for m in moves if m is not None]
        for i in range(len(moves)):
            if self._need(latent, steps, layout, batch, moves[:i + 1]) <= self.max_bytes:
                needed = list(moves[:i + 1])
                for move in moves[:i]:  # give up only what is needed: drop the earlier moves that do not help
                    rest = [m for m in needed if m is not move]
                    if self._need(latent, steps, layout, batch, rest) <= self.max_bytes:
                        needed = rest
                opts = self._apply(needed)
                return opts, self._need(latent, steps, layout, batch, needed)
        return None

    def _apply(self, moves) -> Options:
        o = self.options
        for move in moves:
            o = o.changed(**move)
        return o

    def _need(self, latent, steps, layout, batch, moves) -> int:
        return sum(self.sizes(latent, steps, layout, batch, self._apply(moves)).values())

    def _check_prompts(self) -> None:
        """The prompts given to capture() must be what the text encoder saw (the alignment is made from them)."""
        seen = self.cache.meta.get("tokens")
        if self.prompts is None or seen is None:
            return
        tok = tokenizer_of(self.pipe)
        if len(seen) != len(self.prompts):
            raise ValueError(f"capture() was given {len(self.prompts)} prompt(s) but the pipeline encoded "
                             f"{len(seen)}: {self.cache.meta.get('prompt')}")
        decoded = self.cache.meta.get("prompt") or [None] * len(seen)
        for given, tokens, text in zip(self.prompts, seen, decoded):
            ids = tok(given, truncation=True, max_length=tok.model_max_length).input_ids
            if tok.convert_ids_to_tokens(ids)[:len(tokens)] != tokens:
                raise ValueError(f"capture() was given the prompt {given!r} but the pipeline encoded {text!r}; "
                                 "pass the prompts you generate from")


def capture(pipe, prompt=None, slices: bool = False, mid: bool = False, queries: bool = False, query_steps="all",
            layers=None, keep: Keep | None = None, max_bytes: int = MAX_BYTES, meta: dict | None = None,
            head_layers=None, head_steps=None, tokens=None, dtype: torch.dtype = torch.float32,
            max_sequence_length: int | None = None, method: str = "daam", concepts=None):
    """Capture DAAM's cross-attention maps (and optionally queries) during the pipeline call inside the with-block.

        with capture(pipe, prompts, slices=True, queries=True, head_steps=[2]) as cap:
            pipe(prompts, num_inference_steps=10)
        g = global_maps(cap, batch=1, steps=range(0, 5))     # from cap.slices, heads averaged

    prompt: the prompt(s) the pipeline is called with (the word alignment uses them; without them the text decoded
    from the tokens is used). The published maps (steps summed, every head, cond) are always kept in ``.cache``.
    slices: also keep every step and both branches with heads averaged (``.slices``), to slice by step and branch.
    head_steps / head_layers: also keep every head, both branches, at those steps ("all" or indices) of those
    layers (names or globs; default all) in ``.heads``: exact per-head slices there. tokens: None, "prompt" (only
    the prompt's key positions) or positions, for .slices and .heads. dtype: their storage (and the queries'):
    torch.float32 | float16 | bfloat16. mid: also capture the mid block. queries: also keep the queries (for
    open-vocabulary maps) at `query_steps` ("all" or step indices, cond branch). layers: other attn2 layer names
    instead of daam_layers(pipe, mid). keep: another lab.hooks.Keep for ``.cache``. max_bytes: the most all the
    caches may keep together. Module docstring: what each costs.
    max_sequence_length: the T5 window the pipeline is called with (SD3 / Flux, for tokens='prompt' and concepts).
    method: 'daam' (cross-attention probabilities) or 'concept' (ConceptAttention's output-space maps of
    `concepts`, a list of words, on SD3 / Flux: concept.capture; every step and layer is kept, head_steps='all'
    keeps every head too, the other slice options do not apply).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; valid: {', '.join(map(repr, METHODS))}")
    if method == "concept":
        from . import concept

        asked = dict(slices=slices, mid=mid, queries=queries, layers=layers, keep=keep, head_layers=head_layers,
                     tokens=tokens)
        bad = [k for k, v in asked.items() if v not in (None, False)]
        if bad:
            raise ValueError(f"{', '.join(bad)} do not apply to method='concept' (it keeps every step and layer)")
        if head_steps not in (None, "all"):
            raise ValueError(f"head_steps={head_steps!r}: method='concept' keeps every head at every step or none; "
                             "give head_steps='all' or None")
        return concept.capture(pipe, concepts, prompt, max_bytes, meta, max_sequence_length, head_steps == "all")
    if concepts is not None:
        raise ValueError("concepts= needs method='concept'")
    return Capture(pipe, prompt, slices, mid, queries, query_steps, layers, keep, max_bytes, meta, head_layers,
                   head_steps, tokens, dtype, max_sequence_length)


@dataclass
class Run:
    """A generation with its capture: ``images`` (N, H, W, 3) uint8; ``cache`` (published maps), ``queries``,
    ``slices`` and ``heads`` (lab.hooks Caches, None when not kept)."""

    images: np.ndarray
    cache: Cache
    queries: Cache | None
    prompts: list[str]
    slices: Cache | None = None
    heads: Cache | None = None


def generate(pipe, prompt, seed: int | list[int] = 0, steps: int = 25, guidance: float | None = None,
             slices: bool = False, mid: bool = False, queries: bool = False, query_steps="all", head_layers=None,
             head_steps=None, tokens=None, dtype: torch.dtype = torch.float32, max_bytes: int = MAX_BYTES,
             method: str = "daam", concepts=None, **call_kwargs) -> Run:
    """Run `pipe` on `prompt` (a string or a list) under ``capture`` and return images and caches.

        run = generate(pipe, "a red circle on a white background", seed=0, steps=10, slices=True)
        run = generate(sd3, "a red square", seed=0, steps=28, height=1024, width=1024)   # SD3 / Flux alike
        run = generate(flux, "a cat on grass", steps=4, method="concept", concepts=["cat", "grass", "sky"])

    seed: one seed per prompt (an int gives prompt i the seed ``seed + i``), so a prompt's image does not depend on
    the batch it was generated in. guidance: 7.5 by default on a UNet; the pipeline's own default on a DiT (SD3 7.0,
    FLUX.1-dev's guidance embedding 3.5); <= 1 runs without classifier-free guidance (one branch). The capture
    options and method / concepts are capture()'s; call_kwargs go to the pipeline (max_sequence_length too).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if guidance is not None or not dit.is_dit(pipe):
        call_kwargs["guidance_scale"] = 7.5 if guidance is None else guidance
    device = getattr(pipe, "device", torch.device("cpu"))
    gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    with capture(pipe, prompts, slices=slices, mid=mid, queries=queries, query_steps=query_steps,
                 head_layers=head_layers, head_steps=head_steps, tokens=tokens, dtype=dtype, max_bytes=max_bytes,
                 meta={"seed": seeds}, max_sequence_length=call_kwargs.get("max_sequence_length"), method=method,
                 concepts=concepts) as cap:
        out = pipe(prompts, num_inference_steps=steps, generator=gens, output_type="np",
                   **call_kwargs).images  # (N, H, W, 3) float in [0, 1]
    images = (np.asarray(out) * 255).round().astype(np.uint8)
    return Run(images, cap.cache, getattr(cap, "queries", None), prompts, getattr(cap, "slices", None),
               getattr(cap, "heads", None))


def _call(opts: Options) -> str:
    """'capture(..., slices=True, dtype=torch.float16)': options to paste."""
    kwargs = opts.kwargs()
    return f"capture(..., {kwargs})" if kwargs else "capture(...)"


def _tokenizer(pipe):
    try:
        return tokenizer_of(pipe)
    except TypeError:
        return None
