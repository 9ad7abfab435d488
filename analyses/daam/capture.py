"""Capture what DAAM needs during an ordinary pipeline call: cross-attention maps, and optionally the queries.

    with capture(pipe, "a dog on a mat") as cap:                    # the published method: steps summed, cond only
        image = pipe("a dog on a mat", generator=torch.Generator().manual_seed(0)).images[0]
    cap.cache                                                       # lab.hooks.Cache of every down/up attn2 layer
    run = generate(pipe, ["a red circle", "a blue square"], seed=0, steps=10, slices=True, queries=True)
    run.images, run.cache, run.queries                              # images (N, H, W, 3) uint8 and two Caches

capture(pipe, prompt, slices, mid, queries, ...)  context manager over lab.hooks.trace (+ QueryTrace for queries)
generate(pipe, prompt, seed, steps, guidance, ...) -> Run    runs the pipeline under capture
QueryTrace(pipe, layers, steps, branches)          keeps the input of each attn2's scores: the output of its to_q
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
from lab.hooks.points import points, unet_of

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
    """Context manager from ``capture(...)``; after the with-block ``.cache`` holds the maps, ``.queries`` the queries."""

    def __init__(self, pipe, prompt=None, slices: bool = False, mid: bool = False, queries: bool = False,
                 query_steps="all", layers=None, keep: Keep | None = None, max_bytes: int = MAX_BYTES,
                 meta: dict | None = None):
        self.pipe = pipe
        self.prompts = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
        self.layers = list(layers) if layers is not None else daam_layers(pipe, mid)
        info = {"prompts": self.prompts, "layers": self.layers}
        self._trace = trace(pipe, self.layers, keep=keep or method_keep(slices), max_bytes=max_bytes,
                            meta={"daam": info, **(meta or {})})
        self._queries = QueryTrace(pipe, self.layers, steps=query_steps, max_bytes=max_bytes,
                                   meta={"daam": info}) if queries else None
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
        if exc_type is None:
            self.cache = self._trace.cache
            self.queries = self._queries.cache if self._queries is not None else None
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


def guidance_layout(pipe) -> tuple[str, ...]:
    """The branches of the UNet batch as diffusers builds it: ("uncond", "cond") with guidance, else ("cond",)."""
    if pipe is None:
        return ("cond",)
    try:
        cfg = bool(pipe.do_classifier_free_guidance)
    except AttributeError:
        cfg = (getattr(pipe, "_guidance_scale", None) or 0) > 1
    return ("uncond", "cond") if cfg else ("cond",)


class QueryTrace:
    """Keep the queries of cross-attention layers (the output of ``<layer>.to_q``) at chosen steps of a pipeline call.

        with QueryTrace(pipe, daam_layers(pipe)) as qt:
            pipe("a dog", num_inference_steps=10)
        qt.cache["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"]   # (step, branch, batch, query, channel)

    lab.hooks addresses attention layers, not their projections, so this is its own small hook: a forward pre-hook on
    the UNet counts steps and reads the batch layout, a forward hook on each to_q copies its output. Every hook is
    removed on exit, also after an exception. The queries are those the layer's processor computes, so any processor
    that calls ``attn.to_q`` works (a fused-QKV one does not, and is reported at exit).
    """

    def __init__(self, pipe, layers, steps="all", branches=("cond",), max_bytes: int = MAX_BYTES,
                 meta: dict | None = None):
        self.pipe = pipe
        self.unet = unet_of(pipe)
        self.layers = list(layers)
        modules = dict(self.unet.named_modules())
        bad = [n for n in self.layers if f"{n}.to_q" not in modules]
        if bad:
            raise ValueError(f"{bad[0]!r} has no to_q projection; give attn2 layers, e.g. "
                             f"{', '.join(select(self.unet, kind='attn2')[:2])}")
        self.modules = {n: modules[f"{n}.to_q"] for n in self.layers}
        if steps != "all" and (isinstance(steps, str) or not list(steps)):
            raise ValueError(f"steps={steps!r}; give 'all' or a list of step indices")
        self.steps = steps if steps == "all" else sorted({int(s) for s in steps})
        self.branches = (branches,) if isinstance(branches, str) else tuple(branches)
        self.max_bytes, self.user_meta = int(max_bytes), dict(meta or {})
        self.step, self.kept_steps, self.timesteps = -1, [], []
        self.layout, self.batch, self.latent, self.total = None, None, None, None
        self.parts: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        self._handles: list = []
        self.cache: Cache | None = None

    def __enter__(self) -> "QueryTrace":
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        if exc_type is None:
            self.cache = self._build()
        return False

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _wanted(self) -> bool:
        return self.step >= 0 and (self.steps == "all" or self.step in self.steps)

    def _on_unet(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]  # (B, c, h, w)
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        self.step += 1
        layout = guidance_layout(self.pipe if self.pipe is not self.unet else None)
        if self.step == 0:
            self._setup(sample, layout)
        self.timesteps.append(float(t.flatten()[0]) if torch.is_tensor(t) else float(t))
        if self._wanted():
            self.kept_steps.append(self.step)

    def _setup(self, sample, layout) -> None:
        if sample.shape[0] % len(layout):
            raise ValueError(f"UNet batch {sample.shape[0]} does not split into branches {layout}")
        self.layout, self.batch, self.latent = layout, sample.shape[0] // len(layout), tuple(sample.shape[-2:])
        kept = [b for b in self.branches if b in layout]
        if not kept:
            raise ValueError(f"branches={self.branches} but this run has only {layout} (no guidance)")
        self.kept = kept
        sched = getattr(self.pipe, "scheduler", None)
        self.total = getattr(self.pipe, "_num_timesteps", None) or (len(sched.timesteps) if sched is not None else None)
        if self.steps != "all" and self.total is not None and max(self.steps) >= self.total:
            raise ValueError(f"query steps {self.steps} out of range for {self.total} steps")
        vsf = getattr(self.pipe, "vae_scale_factor", None) or 8
        self.points = {p.name: p for p in points(self.unet, (self.latent[0] * vsf, self.latent[1] * vsf), vsf)}
        n_steps = (self.total or 1) if self.steps == "all" else len(self.steps)
        need = sum(4 * len(kept) * self.batch * p.resolution[0] * p.resolution[1] * p.channels
                   for n, p in self.points.items() if n in self.modules) * n_steps
        if need > self.max_bytes:
            raise MemoryError(f"keeping the queries of {len(self.layers)} layers at {n_steps} steps would take "
                              f"{need / 2**20:.0f} MiB, over max_bytes={self.max_bytes / 2**20:.0f} MiB; pass "
                              "query_steps= a few step indices, fewer layers, or raise max_bytes")

    def _hook(self, name: str):
        def hook(module, args, output):
            if not self._wanted():
                return None
            q = output.detach()  # (B, queries, heads*head_dim)
            q = q.reshape(len(self.layout), self.batch, *q.shape[1:])  # (layout, batch, q, c)
            q = q[[self.layout.index(b) for b in self.kept]]  # (branch, batch, q, c)
            parts = self.parts[name]
            if len(parts) == len(self.kept_steps):  # the layer ran twice in one step: keep the first
                return None
            parts.append(q.to("cpu", torch.float32))
            return None

        return hook

    def _build(self) -> Cache:
        tensors, axes, res, heads = {}, {}, {}, {}
        for name, parts in self.parts.items():
            if len(parts) != len(self.kept_steps):
                raise RuntimeError(f"{name}.to_q ran at {len(parts)} of {len(self.kept_steps)} kept steps: its "
                                   f"processor ({type(dict(self.unet.named_modules())[name].processor).__name__}) "
                                   "does not call attn.to_q; set the default attention processor to keep queries")
            if not parts:
                continue
            key = f"{name}.to_q"
            tensors[key] = torch.stack(parts)  # (step, branch, batch, q, c)
            axes[key] = ("step", "branch", "batch", "query", "channel")
            res[key] = list(self.points[name].resolution)
            heads[key] = self.points[name].heads
        vsf = getattr(self.pipe, "vae_scale_factor", None) or 8
        meta = {"kind": "queries", "steps": list(self.kept_steps), "timesteps": self.timesteps,
                "branches": list(getattr(self, "kept", [])), "layout": list(self.layout or []),
                "resolution": res, "heads": heads, "layers": {f"{n}.to_q": n for n in self.layers},
                "latent_size": list(self.latent) if self.latent else None,
                "image_size": [d * vsf for d in self.latent] if self.latent else None, **self.user_meta}
        return Cache(tensors, axes, meta)
