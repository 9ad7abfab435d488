"""Capture (and edit) a denoiser's attention maps and features at every denoising step of an ordinary pipeline call.

    with trace(pipe, select(pipe, kind="attn2"), keep=Keep(steps="sum", heads="mean")) as tr:
        pipe("a dog on a mat", num_inference_steps=25)
    tr.cache["up_blocks.1.attentions.0.transformer_blocks.0.attn2"]   # (branch, batch, query, key)

The denoiser is a UNet (SD 1.x, 2.x, SDXL) or a diffusion transformer (SD3 / SD3.5, FLUX.1: joint attention and its
views, ``transformer_blocks.3.attn:image->text``; see lab.hooks.dit).

How: a forward pre-hook on the denoiser counts its calls (one per denoising step) and notes the timestep; the chosen
attention layers get the one CaptureProcessor (every other layer keeps its own processor); block, resnet,
transformer and projection points get forward hooks. On exit, also after an exception, every hook is removed and
every layer has its original processor object back.

Observing changes nothing: a layer that is only captured still runs its own processor, and its probabilities are
computed beside it, so the output is bit-identical to an untraced call on any device and dtype (edited layers run
eager math and may differ, as they must). Running sums and kept steps stay on the model's device while it has room and
move once at the end; nothing in a step waits for the device. Traces nest, also on the same attention layer (one
keeps head-averaged maps at every step, an inner one every head at a few steps, or the queries ``<layer>.to_q``); at
most one of them may edit a layer. The guidance layout of the batch ([uncond, cond] halves when the pipeline's
do_classifier_free_guidance is on: SD, SDXL, SD3) is read at each step; FLUX.1-dev's guidance is an embedding and
schnell has none, so every Flux row is 'cond'. A bare model is traced with an explicit `branches=`, which may name
rows of your own (PAG's "perturbed"). While the run goes on, ``tr.so_far(name)`` reads what is kept so far and
``tr.layout()`` the batch's branches; ``swaps=`` run a function in place of a block (lab.hooks.swap).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .cache import Cache
from .context import Context, as_float
from .budget import Budget
from .keep import ATTENTION, BRANCHES, Keep, Store, axes, reduce
from .meta import run_meta
from .dit import family, grid_of, inputs, split_name
from .outputs import read, write
from .points import check_names, denoiser_of, points
from .processor import processor_of
from .swap import SWAPPABLE, Swap

DEFAULT_MAX_BYTES = 2**31  # 2 GiB


def trace(model, names=(), keep: Keep | None = None, edits: Mapping[str, Callable] | None = None,
          max_bytes: int = DEFAULT_MAX_BYTES, branches=None, meta: Mapping | None = None,
          swaps: Mapping[str, Callable] | None = None) -> "Trace":
    """Context manager that captures `names` (point names) at every denoiser call, and applies `edits`.

        with trace(pipe, ["mid_block"], keep=Keep(steps=[0, -1])) as tr:
            pipe("a cat", num_inference_steps=10)
        tr.cache["mid_block"].shape      # (2 steps, branch, batch, channel, h, w)

        with trace(unet, ["up_blocks.1"], branches=("cond",)) as tr:   # a bare UNet: say what the batch holds
            unet(latents, t, text_embeddings)

    keep: what to keep (Keep(); see lab.hooks.keep for the memory each choice costs). edits: {name: fn}; fn(probs, ctx)
    for attention points gets probabilities (batch, heads, query, key), fn(output, ctx) for others gets the hidden
    states (batch, channel, h, w), or (batch, token, channel) for a projection; it returns None to observe or a
    same-shaped replacement (what is kept is then the replacement). max_bytes: the most the kept tensors may take; a
    run that would keep more is refused at its first step (before any denoiser call). branches: the layout of the
    batch, a label per block of rows, e.g. ("uncond", "cond"), or ("uncond", "cond", "perturbed") for rows a loop of
    your own adds (PAG); by default read from the pipeline at each step, ("cond",) for a bare UNet.
    meta: extra metadata for the cache (e.g. {"seed": 0}). swaps: {name: fn} for block, resnet and transformer
    points; fn(run, ctx) runs in place of the module and returns its output, calling run() to run the module or not
    (feature reuse; lab.hooks.swap).
    """
    return Trace(model, names, keep, edits, max_bytes, branches, meta, swaps)


def edited(model, edits: Mapping[str, Callable], branches=None) -> "Trace":
    """Context manager that applies `edits` and keeps nothing: ``trace(model, [], edits=edits)`` by its own name.

        with edited(pipe, {n: scale_tokens([2], 0.0) for n in select(pipe, kind="attn2")}):
            image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]

    edits and branches as for trace(); the model is restored when the with-block ends, also after an error.
    """
    return Trace(model, (), None, edits, DEFAULT_MAX_BYTES, branches, None, None)


class Trace(Budget):
    """The running trace; ``tr.cache`` is its Cache once the with-block has ended. Build it with ``trace(...)``."""

    def __init__(self, model, names, keep, edits, max_bytes, branches, meta, swaps=None):
        self.denoiser = denoiser_of(model)
        self.family = family(self.denoiser)
        self.what = "UNet" if self.family == "unet" else "transformer"
        self.pipe = None if model is self.denoiser or model is getattr(self.denoiser, "_orig_mod", None) else model
        self.names = list(dict.fromkeys(check_names(self.denoiser, names)))
        self.edits = dict(edits or {})
        check_names(self.denoiser, list(self.edits))
        for name, fn in self.edits.items():
            if not callable(fn):
                raise TypeError(f"edit for {name!r} is a {type(fn).__name__}, not a function fn(tensor, ctx)")
        self.swaps = dict(swaps or {})
        check_names(self.denoiser, list(self.swaps))
        self.kinds = {p.name: p.kind for p in points(self.denoiser)}
        for name, fn in self.swaps.items():
            if self.kinds[name] not in SWAPPABLE:
                raise ValueError(f"swap for {name!r}: a {self.kinds[name]} point is not a whole module's output; "
                                 f"swaps take {', '.join(SWAPPABLE)} points (attention maps are edited, not swapped)")
            if not callable(fn):
                raise TypeError(f"swap for {name!r} is a {type(fn).__name__}, not a function fn(run, ctx)")
        self.keep = Keep() if keep is None else keep
        if not isinstance(self.keep, Keep):
            raise TypeError(f"keep must be a lab.hooks.Keep, got {type(self.keep).__name__}")
        self.max_bytes = int(max_bytes)
        if branches is not None:
            branches = (branches,) if isinstance(branches, str) else tuple(branches)
            if not branches or not all(isinstance(b, str) and b for b in branches) or len(set(branches)) != len(
                    branches):
                raise ValueError(f"branches={branches!r}: give the batch layout, a label for each block of rows, "
                                 "each once, e.g. ('cond',), ('uncond', 'cond') or ('uncond', 'cond', 'perturbed')")
        self.layout_override = branches
        self.user_meta = dict(meta or {})
        self.capture = set(self.names)
        self._cache: Cache | None = None
        self._used = False
        self._handles: list = []
        self._processor = None
        self.step, self.slot, self.t = -1, None, None
        self._timesteps: list = []  # the denoiser's timestep argument per call, read as floats once at the end
        self.steps_seen: list[int] = []
        self.input_ids = None
        self.encoder_ids: dict[str, torch.Tensor] = {}  # each text encoder's first input_ids (a DiT has two or three)
        self.grid = None  # a DiT's image token grid
        self.n_keys = None
        self._step_t = None
        self.kept_branches: list[str] = []
        self._rows: tuple[str, ...] = ()
        self.batch = None
        self.device = None
        self.store_device = None
        self.stores: dict[str, Store] = {}

    # --- entering and leaving ----------------------------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        if self._used:
            raise RuntimeError("this trace was already used; call trace(...) again for another run")
        self._used = True
        hooked = list(dict.fromkeys(self.names + list(self.edits)))
        layers = [n for n in hooked if self.kinds[n] in ATTENTION]
        try:
            modules = dict(self.denoiser.named_modules())
            self._handles.append(self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
            for name in hooked:
                if self.kinds[name] not in ATTENTION:
                    module = modules[split_name(name)[0]]
                    self._handles.append(module.register_forward_hook(self._feature_hook(name)))
            for name, fn in self.swaps.items():
                self._handles.append(Swap(name, modules[name], fn, self._swap_ctx(name)))
            for attr in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                encoder = getattr(self.pipe, attr, None)
                if isinstance(encoder, torch.nn.Module):
                    self._handles.append(encoder.register_forward_pre_hook(self._on_text(attr), with_kwargs=True))
            if layers:
                self._processor = processor_of(self.denoiser)
                self._processor.subscribe(self, self.denoiser, layers, set(self.edits) & set(layers))
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._cleanup()
        if exc_type is None:
            self._cache = self._build_cache()
        return False

    def _cleanup(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._processor is not None:
            self._processor.unsubscribe(self)

    @property
    def cache(self) -> Cache:
        """The captured tensors and metadata, once the with-block has ended without an exception."""
        if self._cache is None:
            raise RuntimeError("the cache is ready after the with-block ends (and there is none if it raised)")
        return self._cache

    def so_far(self, name: str) -> torch.Tensor | None:
        """What this trace has kept of `name` so far, while the run goes on: ``cache[name]`` as it would be if the run
        ended now (the same axes; with a step axis, the steps kept so far), a copy, on the device the trace keeps it
        on during the run (the model's when it has room). None until the point is first kept.

            with trace(pipe, names, keep=Keep(steps="sum", heads="mean", branches=("cond",))) as tr:
                def look(pipeline, i, t, kw):
                    maps = tr.so_far(names[0])   # (branch, batch, query, key): steps 0..i summed
                    return kw
                pipe("a cat", callback_on_step_end=look)
        """
        if name not in self.capture:
            raise ValueError(f"{name!r} is not kept by this trace; it keeps: {', '.join(self.names) or 'nothing'}")
        store = self.stores.get(name)
        return None if store is None else store.so_far()

    @property
    def unet(self) -> torch.nn.Module:
        """The traced denoiser (a UNet, or an SD3 / Flux transformer); the name predates DiTs."""
        return self.denoiser

    @property
    def timesteps(self) -> list[float]:
        """The timestep of every denoiser call so far, as floats (reading them waits for the device). Flux's
        transformer takes t / 1000 (the sigma), SD3's the scheduler's t."""
        return [as_float(t) for t in self._timesteps]

    @property
    def timestep(self) -> float | None:
        return None if self.t is None else as_float(self.t)

    def layout(self) -> tuple[str, ...]:
        """The branch of each block of rows in the denoiser's batch, in order: ``("uncond", "cond")`` with
        classifier-free guidance (rows ``ctx.rows(b)``), ``("cond",)`` without.

            with trace(pipe, names) as tr:
                pipe("a cat", guidance_scale=7.5)
            tr.layout()        # ('uncond', 'cond'): rows [0, batch) unconditional, [batch, 2 * batch) conditional

        From step 0 on, the run's layout (it cannot change within a run). Before it, the branches= given, else what the
        pipeline says now, read as each step reads it: in a hook that runs before the trace's at the first denoiser
        call (a memory check before step 0), the layout that call will have."""
        return self._rows if self.step >= 0 else self._read_layout()

    # --- per denoiser call -------------------------------------------------------------------------------------------
    def _read_layout(self) -> tuple[str, ...]:
        if self.layout_override is not None:
            return self.layout_override
        if self.pipe is None:
            return ("cond",)
        try:
            cfg = bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # Flux: guidance is an embedding (dev) or nothing (schnell); every row is 'cond'
            cfg = self.family == "unet" and (getattr(self.pipe, "_guidance_scale", None) or 0) > 1
        return ("uncond", "cond") if cfg else ("cond",)

    def _on_text(self, attr: str):
        def hook(module, args, kwargs) -> None:
            ids = args[0] if args else kwargs.get("input_ids")
            if attr not in self.encoder_ids and torch.is_tensor(ids):  # the prompt's; a negative prompt comes later
                self.encoder_ids[attr] = ids.detach().cpu()  # (prompts, tokens)
                if self.input_ids is None and attr in ("text_encoder", "text_encoder_2"):
                    self.input_ids = self.encoder_ids[attr]

        return hook

    def _one_call_per_step(self) -> None:
        """A pipeline that runs its denoiser twice in one step (Flux's true CFG, SD3's skip-layer guidance) has a
        layout a trace does not split yet: refuse it rather than count the second call as a step."""
        now = getattr(self.pipe, "_current_timestep", None)
        if now is not None and now is self._step_t:
            raise NotImplementedError(
                f"{type(self.pipe).__name__} ran its {type(self.denoiser).__name__} twice in denoising step "
                f"{self.step} (true_cfg_scale with a negative prompt, or skip_guidance_layers); a trace takes one "
                "denoiser call per step: run without them")
        self._step_t = now

    def _on_denoiser(self, module, args, kwargs) -> None:
        sample, t, enc = inputs(self.family, args, kwargs)  # UNet (B, c, h, w); SD3 (B, c, h, w), Flux (B, n, c)
        if self.pipe is not None and self.family != "unet":
            self._one_call_per_step()
        self.step += 1
        self.t = t.detach().flatten()[0] if torch.is_tensor(t) else t  # stays on the device: no wait per step
        self._timesteps.append(self.t)
        layout = self._read_layout()
        if sample.shape[0] % len(layout):
            raise ValueError(f"{self.what} batch {sample.shape[0]} does not split into branches {layout}; pass "
                             "trace(..., branches=...) with the layout of the batch")
        batch = sample.shape[0] // len(layout)
        if self.step == 0:
            self.device = sample.device
            self._setup(sample, enc, layout, batch, args, kwargs)
        elif sample.device != self.device:
            raise RuntimeError(f"the {self.what} ran on {self.device} at step 0 and on {sample.device} at step "
                               f"{self.step}: the model was moved during the trace; move it before trace() (or enable "
                               "offloading before it), then run again")
        elif (layout, batch) != (self._rows, self.batch):
            raise ValueError(f"step {self.step} has branches {layout} x batch {batch}, the first step had "
                             f"{self._rows} x {self.batch}; one trace covers one pipeline call")
        self.slot = self._slot(self.step)
        if self.slot is not None:
            self.steps_seen.append(self.step)
        if self.total_steps is None and self.keep.step_mode == "all":
            self._check_budget(len(self.steps_seen), f"after {len(self.steps_seen)} steps")

    def _slot(self, step: int) -> int | None:
        mode = self.keep.step_mode
        if mode == "list":
            return self.step_slots.get(step)
        return step if mode == "all" else 0

    def _setup(self, sample, enc, layout, batch, args, kwargs) -> None:
        self._rows, self.batch = layout, batch  # the run's branch layout (layout()) and rows per branch
        self.n_keys = enc.shape[1] if torch.is_tensor(enc) else None
        if self.family == "unet":
            self.latent = tuple(sample.shape[-2:])
        else:
            self.grid, self.latent = grid_of(self.denoiser, sample, args, kwargs)
        self.vae_scale_factor = getattr(self.pipe, "vae_scale_factor", None) or 8
        vsf = self.vae_scale_factor
        size = (self.latent[0] * vsf, self.latent[1] * vsf)
        self.points = {p.name: p for p in points(self.denoiser, size, vsf, text_tokens=self.n_keys)}
        kept = [b for b in self.keep.branches if b in layout]
        unknown = [b for b in self.keep.branches if b not in layout and b not in BRANCHES]
        if unknown:
            raise ValueError(f"Keep.branches has {unknown[0]!r}, which is not a branch of this run; its branches: "
                             f"{', '.join(layout)} (name others with trace(..., branches=...))")
        if not kept:
            raise ValueError(f"Keep.branches={self.keep.branches} but this run's batch has only {layout} "
                             "(no 'uncond' without classifier-free guidance, i.e. guidance_scale <= 1)")
        self.kept_branches = kept
        if self.keep.tokens is not None and self.n_keys is not None:
            bad = [t for t in self.keep.tokens if not -self.n_keys <= t < self.n_keys]
            if bad:
                raise ValueError(f"Keep.tokens {bad} out of range: cross-attention has {self.n_keys} keys (tokens)")
        self.total_steps = None
        if self.pipe is not None:
            self.total_steps = getattr(self.pipe, "_num_timesteps", None) or len(self.pipe.scheduler.timesteps)
        self.step_slots = {}
        if self.keep.step_mode == "list":
            wanted = []
            for s in self.keep.steps:
                if s < 0 and self.total_steps is None:
                    raise ValueError(f"Keep.steps has {s}: negative steps need a known step count (a pipeline call)")
                s = s + self.total_steps if s < 0 else s
                if s < 0 or (self.total_steps is not None and s >= self.total_steps):
                    raise ValueError(f"Keep.steps has step {s}, out of range for {self.total_steps} steps")
                wanted.append(s)
            self.step_slots = {s: i for i, s in enumerate(sorted(set(wanted)))}
        n_slots = {"all": self.total_steps, "list": len(self.step_slots)}.get(self.keep.step_mode, 1)
        self.store_device = torch.device(self.keep.device)
        if n_slots is not None:
            self._check_budget(n_slots, f"for {n_slots} steps" if self.keep.step_mode in ("all", "list") else "")
        self.stores = {name: Store(self.keep, n_slots, self.store_device) for name in self.names}

    # --- what the capture processor asks (see lab.hooks.processor) ---------------------------------------------------
    def rows(self) -> tuple[tuple[str, ...], int]:
        """The guidance layout of this step's batch and the rows per branch."""
        return self._rows, self.batch

    def edits_now(self, name: str) -> bool:
        return self.step >= 0 and name in self.edits

    def keeps_now(self, name: str) -> bool:
        return self.step >= 0 and self.slot is not None and name in self.capture

    def keeps_before_edits(self, name: str) -> bool:
        return self.keep.before_edits

    def keeps_head_mean(self, name: str) -> bool:
        return self.keep.heads == "mean"

    def text_tokens(self) -> int | None:
        """Text keys of this run (a DiT's joint sequence holds them beside the image tokens)."""
        return self.n_keys

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        new = self.edits[name](x, self._ctx(name))
        if new is not None and tuple(new.shape) != tuple(x.shape):
            raise ValueError(f"edit for {name!r} returned shape {tuple(new.shape)}; it must keep {tuple(x.shape)}")
        return new

    def record(self, name: str, x: torch.Tensor, have: tuple[str, ...], heads_averaged: bool = False) -> None:
        """Keep `x` (rows of the branches `have`, in order) of point `name` at this step."""
        if self.keeps_now(name):
            kept = reduce(x, self.kinds[name], self.keep, have, self.kept_branches, heads_averaged)
            self.stores[name].add(self.slot, kept)

    # --- per hooked module --------------------------------------------------------------------------------------------
    def _ctx(self, name: str) -> Context:
        p = self.points.get(name) if self.step >= 0 else None
        return Context(name, self.step, self.t, self._rows, self.batch, p.resolution if p else None)

    def _swap_ctx(self, name: str):
        return lambda: self._ctx(name) if self.step >= 0 else None

    def _feature_hook(self, name: str):
        kind = self.kinds[name]

        def hook(module, args, output):
            if self.step < 0:
                return None
            hidden = read(output, kind, self.grid)  # (B, c, h, w), or (B, tokens, c)
            new = self.edit(name, hidden) if name in self.edits else None
            self.record(name, hidden if new is None or self.keep.before_edits else new, self._rows)
            return None if new is None else write(output, kind, self.grid, new)

        return hook

    # --- the result ---------------------------------------------------------------------------------------------------
    def _build_cache(self) -> Cache:
        tensors, axes_, res = {}, {}, {}
        by_slot = self.keep.step_mode in ("all", "list")
        filled = [self.step_slots.get(s, s) for s in self.steps_seen] if by_slot else None
        for name in self.names:
            t = self.stores[name].result() if name in self.stores else None
            if t is None:
                if self.steps_seen and self.kinds[name] == "projection":
                    layer = dict(self.denoiser.named_modules())[name.rsplit(".", 1)[0].removesuffix(".to_out")]
                    raise RuntimeError(f"{name!r} never ran: its layer's processor ({type(layer.processor).__name__})"
                                       " does not call it (a fused QKV projection?); set diffusers' default "
                                       "attention processor to capture projections")
                continue
            if filled is not None and self.stores[name].n_slots is not None and filled != list(range(t.shape[0])):
                t = t[filled]
            tensors[name], axes_[name] = t.contiguous(), axes(self.kinds[name], self.keep)
            res[name] = list(self.points[name].resolution)
        return Cache(tensors, axes_, run_meta(self, res))

