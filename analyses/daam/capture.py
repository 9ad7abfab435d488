"""Capture what DAAM needs during an ordinary pipeline call: cross-attention maps, and optionally the queries.

    with capture(pipe, "a dog on a mat") as cap:                    # the published method: steps summed, cond only
        image = pipe("a dog on a mat", generator=torch.Generator().manual_seed(0)).images[0]
    cap.cache                                                       # lab.hooks.Cache of every down/up attn2 layer
    run = generate(pipe, ["a red circle", "a blue square"], seed=0, steps=10, slices=True, queries=True)
    run.images, run.cache, run.queries                              # images (N, H, W, 3) uint8 and two Caches

capture(pipe, prompt, slices, mid, queries, ...)  context manager over lab.hooks.trace: one trace keeps the maps,
                                                   a nested one the queries (each layer's ``<layer>.to_q`` projection)
generate(pipe, prompt, seed, steps, guidance, ...) -> Run    runs the pipeline under capture
daam_layers(pipe, mid=False)                        the attn2 layers of the down and up blocks (and the mid block)

Memory (fp32): slices=False keeps per layer 4 * batch * heads * queries * 77 bytes (steps summed, cond branch);
slices=True keeps that x steps x 2 branches (for the built-in model at 25 steps: 6 MiB per image). queries=True keeps
4 * batch * queries * heads * head_dim bytes per layer per step (cond branch): 3 MiB per image for the built-in model
at 25 steps, ~5 MiB per layer per step for SD1.5 at 64x64 latents (pass query_steps= a few steps there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lab.hooks import Cache, Keep, select, trace

from .words import tokenizer_of

MAX_BYTES = 2**31


def daam_layers(pipe, mid: bool = False) -> list[str]:
    """Full names of the cross-attention layers DAAM aggregates: down and up blocks, plus the mid block if `mid`."""
    return select(pipe, kind="attn2", block=("down", "mid", "up") if mid else ("down", "up"))


def method_keep(slices: bool) -> Keep:
    """The Keep for plain DAAM (steps summed, every head, cond branch) or for slicing (every step, both branches)."""
    if slices:
        return Keep(steps="all", heads="all", branches=("cond", "uncond"))
    return Keep(steps="sum", heads="all", branches=("cond",))


class Capture:
    """Context manager from ``capture(...)``; after the with-block ``.cache`` holds the maps and ``.queries`` the
    queries."""

    def __init__(self, pipe, prompt=None, slices: bool = False, mid: bool = False, queries: bool = False,
                 query_steps="all", layers=None, keep: Keep | None = None, max_bytes: int = MAX_BYTES,
                 meta: dict | None = None):
        self.pipe = pipe
        self.prompts = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
        self.layers = list(layers) if layers is not None else daam_layers(pipe, mid)
        info = {"prompts": self.prompts, "layers": self.layers}
        self._trace = trace(pipe, self.layers, keep=keep or method_keep(slices), max_bytes=max_bytes,
                            meta={"daam": info, **(meta or {})})
        self._queries = None
        if queries:
            if query_steps != "all" and (isinstance(query_steps, str) or not list(query_steps)):
                raise ValueError(f"query_steps={query_steps!r}; give 'all' or a list of step indices")
            self._queries = trace(pipe, [f"{n}.to_q" for n in self.layers], max_bytes=max_bytes,
                                  keep=Keep(steps=query_steps, branches=("cond",)), meta={"daam": info})
        self.cache: Cache | None = None
        self.queries: Cache | None = None

    def __enter__(self) -> "Capture":
        self._trace.__enter__()
        if self._queries is not None:
            try:
                self._queries.__enter__()
            except BaseException:
                self._trace.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._queries is not None:
                self._queries.__exit__(exc_type, exc, tb)
        finally:
            self._trace.__exit__(exc_type, exc, tb)
        if exc_type is MemoryError and self._queries is not None and self._queries.step >= 0:
            raise MemoryError(f"{exc} For the queries: pass query_steps= a few step indices.") from exc
        if exc_type is None:
            self.cache = self._trace.cache
            self.queries = self._queries.cache if self._queries is not None else None  # (step, branch, batch, token, c)
            self._check_prompts()
        return False

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
            layers=None, keep: Keep | None = None, max_bytes: int = MAX_BYTES, meta: dict | None = None) -> Capture:
    """Capture DAAM's cross-attention maps (and optionally queries) during the pipeline call inside the with-block.

        with capture(pipe, prompts, slices=True, queries=True) as cap:
            pipe(prompts, num_inference_steps=10)
        g = global_maps(cap.cache, batch=1, steps=range(0, 5))

    prompt: the prompt(s) the pipeline is called with (the word alignment uses them; without them the text decoded
    from the tokens is used). slices: keep every step and both branches, so maps can be sliced by step, branch, head
    and layer afterwards; else steps are summed in place and only the cond branch is kept. mid: also capture the mid
    block. queries: also keep the queries (for open-vocabulary maps) at `query_steps` ("all" or step indices, cond
    branch). layers: other attn2 layer names instead of daam_layers(pipe, mid). keep: any other lab.hooks.Keep.
    """
    return Capture(pipe, prompt, slices, mid, queries, query_steps, layers, keep, max_bytes, meta)


@dataclass
class Run:
    """A generation with its capture: ``images`` (N, H, W, 3) uint8, ``cache`` (maps), ``queries`` (or None)."""

    images: np.ndarray
    cache: Cache
    queries: Cache | None
    prompts: list[str]


def generate(pipe, prompt, seed: int | list[int] = 0, steps: int = 25, guidance: float = 7.5, slices: bool = False,
             mid: bool = False, queries: bool = False, query_steps="all", **call_kwargs) -> Run:
    """Run `pipe` on `prompt` (a string or a list) under ``capture`` and return images and caches.

        run = generate(pipe, "a red circle on a white background", seed=0, steps=10, slices=True)

    seed: one seed per prompt (an int gives prompt i the seed ``seed + i``), so a prompt's image does not depend on
    the batch it was generated in. guidance <= 1 runs without classifier-free guidance (one branch).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    device = getattr(pipe, "device", torch.device("cpu"))
    gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    with capture(pipe, prompts, slices=slices, mid=mid, queries=queries, query_steps=query_steps,
                 meta={"seed": seeds}) as cap:
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np",
                   **call_kwargs).images  # (N, H, W, 3) float in [0, 1]
    images = (np.asarray(out) * 255).round().astype(np.uint8)
    return Run(images, cap.cache, cap.queries, prompts)
