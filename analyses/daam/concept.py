"""ConceptAttention (Helbling et al., 2025) on SD3 / Flux: concept maps from the attention layers' OUTPUT space.

    run = daam.generate(flux, "a cat on the grass", seed=0, steps=4, method="concept", concepts=["cat", "grass", "sky"])
    g = daam.global_maps(run)              # GlobalMaps: maps (3 concepts, h, w), softmax over concepts; g.concepts
    daam.word_map(g, flux, "cat")          # (H, W) in [0, 1]; daam.word_maps(g, flux) -> {concept: map}
    daam.global_maps(run, steps=[3], blocks="double", layers="transformer_blocks.1*")   # slices, no re-run
    daam.generate(..., method="concept", concepts=[...], head_steps="all")   # every head too: global_maps(heads=3)

capture(pipe, concepts, prompt, max_bytes, meta, max_sequence_length, heads)   context manager; .cache after it
global_maps(run, batch, steps, layers, blocks, heads)   the maps of a slice; concept_map(g, concept) one concept's map
embed(pipe, concepts, max_sequence_length)        each concept's T5 state (the mean over its tokens)

How: each concept is one token in a stream of its own beside the text stream, starting from its T5 state through the
transformer's context_embedder. In every joint-attention block the concept tokens are normed and projected by the
text stream's modules (norm1_context, add_q/k/v_proj, norm_added_q/k; Flux's single-stream blocks: norm, to_q/k/v,
norm_q/k), attend to the image's keys and values (the very ones the layer made, caught by forward hooks, Flux's
rotary positions applied) and to each other, and update their stream as the text stream would (to_add_out,
norm2_context, ff_context; single-stream: proj_mlp, proj_out). Nothing flows back: the image and the prompt never
attend to the concepts, so the image is bit-identical. A layer's map is o_x . o_c: the image tokens' attention output
(the input of to_out.0; heads concatenated, i.e. the sum of the heads' dot products) against each concept's.
global_maps takes the softmax over concepts of each (step, layer) map (of the chosen heads' sum, with heads kept) and
averages over the chosen steps and layers (the cond branch only).

Memory: 4 * steps * layers * batch * image tokens * concepts bytes, every step and layer kept (FLUX.1 at 1024 px,
28 steps, 57 layers, 4 concepts: 100 MiB; SD3-medium, 24 layers: 42 MiB), times the heads with heads=True (24:
2.3 GiB and 0.98 GiB); refused over max_bytes before step 0.
"""
from __future__ import annotations

import fnmatch

import torch

from lab.hooks import Cache, Keep, trace
from lab.hooks.dit import family
from lab.hooks.joint import JOINT_EQUIVALENT
from lab.hooks.keep import human
from lab.hooks.points import denoiser_of

from .maps import DIT_BLOCKS, GlobalMaps, block_of, expand, prompt_of

AXES = ("step", "batch", "query", "concept")
HEAD_AXES = ("step", "batch", "head", "query", "concept")


@torch.no_grad()
def embed(pipe, concepts, max_sequence_length: int | None = None) -> torch.Tensor:
    """(concepts, joint_attention_dim): each concept's T5 state, the mean over its tokens (end token left out),
    encoded as the pipeline encodes prompts (same max_sequence_length padding). SD3 without T5: its CLIP states."""
    fam = family(pipe.transformer)
    device = getattr(pipe, "_execution_device", None) or pipe.transformer.device
    if fam == "flux":
        length = max_sequence_length or 512
        emb = pipe.encode_prompt(list(concepts), None, device=device, max_sequence_length=length)[0]
        start, tok = 0, pipe.tokenizer_2  # emb: (n, L, dim), T5 only
    else:
        length = max_sequence_length or 256
        emb = pipe.encode_prompt(list(concepts), None, None, device=device, do_classifier_free_guidance=False,
                                 max_sequence_length=length)[0]  # (n, 77 + L, dim): CLIP window, then T5
        t5 = getattr(pipe, "text_encoder_3", None) is not None
        start, tok = (pipe.tokenizer_max_length, pipe.tokenizer_3) if t5 else (1, pipe.tokenizer)
    rows = []
    for i, concept in enumerate(concepts):
        n = min(len(tok.tokenize(concept)), length - 1)
        rows.append(emb[i, start:start + n].float().mean(0))  # (dim,)
    return torch.stack(rows)  # (n, dim)


def _heads(attn, x: torch.Tensor, norm=None) -> torch.Tensor:
    """(b, s, heads*d) -> (b, s, heads, d), normed over d where the layer norms (RMSNorm works per head)."""
    x = x.unflatten(-1, (attn.heads, -1))  # (b, s, heads, d)
    return x if norm is None else norm(x)


class ConceptCapture:
    """Context manager from ``capture(...)``: ``.cache`` after the with-block ({attention layer: (step, batch,
    query, concept)} raw o_x . o_c, cond branch), ``.concepts``."""

    def __init__(self, pipe, concepts, prompt=None, max_bytes: int = 2**31, meta: dict | None = None,
                 max_sequence_length: int | None = None, heads: bool = False):
        self.dit = denoiser_of(pipe)
        if family(self.dit) == "unet":
            raise ValueError(f"method='concept' needs a diffusion transformer's joint attention (SD3, SD3.5, FLUX.1); "
                             f"this pipeline has a {type(self.dit).__name__}")
        concepts = [concepts] if isinstance(concepts, str) else list(concepts or [])
        bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
        if not concepts or bad:
            raise ValueError(f"concepts={concepts!r}: give a list of words or phrases, e.g. ['cat', 'grass', 'sky']")
        if len({c.lower() for c in concepts}) != len(concepts):
            raise ValueError(f"concepts={concepts!r} repeats a concept; give each once")
        self.concepts, self.pipe, self.max_bytes, self.heads = concepts, pipe, int(max_bytes), bool(heads)
        self.prompts = None if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))
        blocks = [(f"transformer_blocks.{i}", b, False) for i, b in enumerate(self.dit.transformer_blocks)]
        blocks += [(f"single_transformer_blocks.{i}", b, True)
                   for i, b in enumerate(getattr(self.dit, "single_transformer_blocks", None) or [])]
        for name, block, _ in blocks:
            kind = type(block.attn.processor).__name__
            if kind not in JOINT_EQUIVALENT:
                raise ValueError(f"{name + '.attn'!r} uses {kind}, whose keys and values ConceptAttention cannot read; "
                                 f"processors it can stand beside: {', '.join(sorted(JOINT_EQUIVALENT))}")
        self.blocks = blocks
        self.embeds = embed(pipe, concepts, max_sequence_length)  # before the trace: its encoder hooks see the prompt
        info = {"method": "concept", "concepts": concepts, "prompts": self.prompts}
        self.trace = trace(pipe, [], keep=Keep(branches=("cond",)), max_bytes=max_bytes,
                           meta={"daam": info, **(meta or {})})
        self.cache: Cache | None = None
        self._handles: list = []
        self.stores: dict[str, torch.Tensor] = {}
        self.stream = self.start = None  # (b, n_c, D) the concept stream now, (n_c, D) where each step starts it
        self.caught: dict = {}  # what the block now running made: to_k / to_v (or to_qkv) outputs, its attention output
        self.kw: dict = {}  # the running block's keyword arguments (temb, rotary, the text stream)
        self.rows = slice(None)  # the cond rows of the batch
        self.armed = False

    # --- entering and leaving ----------------------------------------------------------------------------------------
    def __enter__(self) -> "ConceptCapture":
        self.trace.__enter__()  # counts steps, reads the layout and grid; its pre-hook runs before ours
        try:
            add = self._handles.append
            add(self.dit.register_forward_pre_hook(self._on_step))
            for name, block, single in self.blocks:
                attn = block.attn
                add(block.register_forward_pre_hook(self._before, with_kwargs=True))
                add(block.register_forward_hook(self._after(name + ".attn", block, single)))
                for proj in ("to_k", "to_v", "to_qkv"):
                    if isinstance(getattr(attn, proj, None), torch.nn.Module):
                        add(getattr(attn, proj).register_forward_hook(self._catch(proj)))
                if single:  # pre_only: the processor returns the joint sequence's attention output
                    add(attn.register_forward_hook(self._catch("out")))
                else:
                    add(attn.to_out[0].register_forward_pre_hook(lambda m, a: self._keep("out", a[0])))
        except BaseException:
            self._leave(*(None,) * 3)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._leave(exc_type, exc, tb)
        if exc_type is None:
            self.cache = self._build()
        return False

    def _leave(self, exc_type, exc, tb) -> None:
        try:
            for h in self._handles:
                h.remove()
            self._handles.clear()
        finally:
            self.trace.__exit__(exc_type, exc, tb)
            self.caught.clear()

    # --- hooks -------------------------------------------------------------------------------------------------------
    def _keep(self, what: str, x: torch.Tensor) -> None:
        if self.armed:
            self.caught[what] = x.detach()

    def _catch(self, what: str):
        def hook(module, args, output):
            self._keep(what, output)

        return hook

    def _on_step(self, module, args) -> None:
        tr = self.trace
        b, (h, w) = tr.batch, tr.grid
        i = tr.layout().index("cond")
        self.rows = slice(i * b, (i + 1) * b)
        if tr.step == 0:
            steps = tr.total_steps or 1
            per_head = (self.blocks[0][1].attn.heads,) if self.heads else ()
            need = 4 * steps * len(self.blocks) * b * h * w * len(self.concepts) * (per_head or (1,))[0]
            if need > self.max_bytes:
                raise MemoryError(f"ConceptAttention of {len(self.concepts)} concepts over {steps} steps and "
                                  f"{len(self.blocks)} layers{' per head' if self.heads else ''} would keep "
                                  f"{human(need)}, over max_bytes={human(self.max_bytes)}; fewer concepts or steps"
                                  f"{', heads averaged' if self.heads else ''}, or raise max_bytes")
            self.stores = {name + ".attn": torch.zeros((steps, b, *per_head, h * w, len(self.concepts)),
                                                       device=tr.device)
                           for name, _, _ in self.blocks}  # (step, batch, [head,] query, concept)
            emb = self.embeds.to(tr.device, self.dit.context_embedder.weight.dtype)
            self.start = self.dit.context_embedder(emb)  # (n_c, D)
        self.stream = self.start[None].expand(b, -1, -1)  # (b, n_c, D): a fresh concept stream every step

    def _before(self, module, args, kwargs) -> None:
        self.kw = kwargs
        self.caught.clear()
        self.armed = True

    def _after(self, name: str, block, single: bool):
        def hook(module, args, output):
            self.armed = False
            if self.stream is not None and self.trace.step >= 0:
                with torch.no_grad():
                    self._concepts(name, block, single)
            self.caught.clear()

        return hook

    # --- the concept stream through one block ------------------------------------------------------------------------
    def _concepts(self, name: str, block, single: bool) -> None:
        attn, c, rows = block.attn, self.stream, self.rows
        temb = self.kw["temb"][rows]  # (b, D)
        n_text = self.kw["encoder_hidden_states"].shape[1]
        k_img, v_img = self.caught.get("to_k"), self.caught.get("to_v")
        if k_img is None:
            _, k_img, v_img = self.caught["to_qkv"].chunk(3, dim=-1)
        k_img = _heads(attn, k_img[rows], attn.norm_k)  # (b, S, heads, d): S image tokens, or all (single)
        v_img = _heads(attn, v_img[rows])  # (b, S, heads, d)
        rotary = self.kw.get("image_rotary_emb")
        if rotary is not None:  # Flux: rotary positions over [text, image]; the text's (and concepts') are 0
            from diffusers.models.embeddings import apply_rotary_emb

            cos, sin = rotary
            if not single:
                cos, sin = cos[n_text:], sin[n_text:]
            k_img = apply_rotary_emb(k_img, (cos, sin), sequence_dim=1)
        out = self.caught["out"][rows]  # (b, I, inner), or (b, T + I, inner) in a single-stream block
        if single:
            k_img, v_img, out = k_img[:, n_text:], v_img[:, n_text:], out[:, n_text:]
            norm_c, gate = block.norm(c, emb=temb)  # (b, n_c, D)
            q_c = _heads(attn, attn.to_q(norm_c), attn.norm_q)  # (b, n_c, heads, d)
            k_c, v_c = _heads(attn, attn.to_k(norm_c), attn.norm_k), _heads(attn, attn.to_v(norm_c))
        else:
            last = getattr(block, "context_pre_only", False)  # SD3's last block: the text stream ends here
            if last:
                norm_c = block.norm1_context(c, temb)
            else:
                norm_c, g_msa, shift_mlp, scale_mlp, g_mlp = block.norm1_context(c, emb=temb)
            q_c = _heads(attn, attn.add_q_proj(norm_c), getattr(attn, "norm_added_q", None))  # (b, n_c, heads, d)
            k_c = _heads(attn, attn.add_k_proj(norm_c), getattr(attn, "norm_added_k", None))
            v_c = _heads(attn, attn.add_v_proj(norm_c))
        keys = torch.cat([k_img, k_c], dim=1).float()  # (b, I + n_c, heads, d)
        values = torch.cat([v_img, v_c], dim=1).float()
        scores = torch.einsum("bqhd,bkhd->bhqk", q_c.float(), keys) * q_c.shape[-1] ** -0.5  # (b, heads, n_c, I+n_c)
        o_c = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), values)  # (b, n_c, heads, d)
        o_x = _heads(attn, out.float())  # (b, I, heads, d)
        slot = self.trace.step
        if self.heads:
            self.stores[name][slot] = torch.einsum("bihd,bchd->bhic", o_x, o_c)  # (b, heads, I, n_c)
        else:
            self.stores[name][slot] = torch.einsum("bid,bcd->bic", o_x.flatten(2), o_c.flatten(2))  # (b, I, n_c)
        o_c = o_c.flatten(2).to(c.dtype)  # (b, n_c, inner)
        if single:
            mlp = block.act_mlp(block.proj_mlp(norm_c))  # (b, n_c, mlp)
            self.stream = c + gate[:, None] * block.proj_out(torch.cat([o_c, mlp], dim=2))
        elif last:
            self.stream = None
        else:
            c = c + g_msa[:, None] * attn.to_add_out(o_c)
            normed = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            self.stream = c + g_mlp[:, None] * block.ff_context(normed)  # (b, n_c, D)

    # --- the result ---------------------------------------------------------------------------------------------------
    def _build(self) -> Cache:
        meta = dict(self.trace.cache.meta)
        seen = len(self.trace.steps_seen)
        tensors = {n: t[:seen].cpu() for n, t in self.stores.items()}
        grid = meta.get("token_grid")
        meta.update(resolution={n: grid for n in tensors}, kinds={n: "concepts" for n in tensors},
                    steps=list(range(seen)))
        return Cache(tensors, {n: HEAD_AXES if self.heads else AXES for n in tensors}, meta)


def capture(pipe, concepts, prompt=None, max_bytes: int = 2**31, meta: dict | None = None,
            max_sequence_length: int | None = None, heads: bool = False) -> ConceptCapture:
    """Keep ConceptAttention's maps of `concepts` during the pipeline call inside the with-block; observe-only.

        with capture(flux, ["cat", "grass", "sky"], "a cat on the grass", max_sequence_length=512) as cap:
            flux("a cat on the grass", num_inference_steps=4)
        global_maps(cap.cache)             # (3, h, w)

    concepts: words or phrases (one token each: the mean of their T5 states). prompt: the prompt(s) of the call
    (recorded; the maps do not depend on it). max_sequence_length: the call's (the concepts are encoded with the
    same T5 padding). heads: keep each head's dot products (for head slices). max_bytes: see the module docstring.
    """
    return ConceptCapture(pipe, concepts, prompt, max_bytes, meta, max_sequence_length, heads)


def global_maps(run, batch: int = 0, steps=None, layers=None, blocks=None, heads=None,
                branch: str = "cond") -> GlobalMaps:
    """The concepts' maps (concepts, h, w) of image `batch`: softmax over concepts of each (step, layer) map,
    averaged over `steps` (indices; default all) and the layers chosen by `layers` (names or globs) or `blocks`
    ('double' | 'single'; default all). heads (an int or indices; needs heads kept): each map is then the sum of
    those heads' dot products."""
    cache = run if isinstance(run, Cache) else run.cache
    meta = cache.meta
    head_list = None if heads is None else ([int(heads)] if isinstance(heads, int) else [int(h) for h in heads])
    if head_list is not None and "head" not in cache.axes[next(iter(cache))]:
        raise ValueError(f"heads={heads!r} needs every head kept: generate(..., method='concept', head_steps='all')")
    if branch != "cond":
        raise ValueError(f"branch={branch!r}: ConceptAttention keeps the cond branch only")
    names = list(cache)
    if layers is not None:
        globs = [layers] if isinstance(layers, str) else list(layers)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    elif blocks is not None:
        wanted = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        bad = [b for b in wanted if b not in DIT_BLOCKS]
        if bad:
            raise ValueError(f"unknown block {bad[0]!r}; blocks: {', '.join(DIT_BLOCKS)}")
        names = [n for n in names if block_of(n) in wanted]
    if not names:
        raise ValueError(f"no layer matches layers={layers!r}, blocks={blocks!r}; layers: {', '.join(cache)}")
    kept = meta["steps"]
    chosen = kept if steps is None else ([int(steps)] if isinstance(steps, int) else [int(s) for s in steps])
    missing = [s for s in chosen if s not in kept]
    if missing or not chosen:
        raise ValueError(f"steps={steps!r}: step {missing[0] if missing else None} was not run; steps: 0..{kept[-1]}")
    n_batch = cache[names[0]].shape[1]
    if not 0 <= batch < n_batch:
        raise ValueError(f"batch={batch} is out of range: the run had {n_batch} images")
    at = [kept.index(s) for s in chosen]

    def scores(name):  # (steps, query, concept)
        x = cache[name][at, batch].float()  # (steps, [head,] query, concept)
        if "head" not in cache.axes[name]:
            return x
        bad = [h for h in (head_list or []) if not 0 <= h < x.shape[1]]
        if bad:
            raise ValueError(f"head {bad[0]} is out of range for {name!r}, which has {x.shape[1]} heads")
        return (x if head_list is None else x[:, head_list]).sum(1)

    total = sum(scores(n).softmax(-1).sum(0) for n in names)  # (query, concept)
    h, w = cache.resolution(names[0])
    maps = (total / (len(names) * len(at))).T.reshape(-1, h, w)  # (concepts, h, w)
    concepts = tuple(meta["daam"]["concepts"])
    prompt = prompt_of(cache, batch) if (meta["daam"].get("prompts") or meta.get("prompt")) else ""
    return GlobalMaps(maps, prompt, tuple(meta.get("image_size") or (h, w)), tuple(names),
                      None if steps is None else tuple(chosen), None if head_list is None else tuple(head_list),
                      "cond", None, False, None, concepts)


def concept_map(g: GlobalMaps, concept: str, size=None, normalize: bool = True, relative: bool = False
                ) -> torch.Tensor:
    """(H, W) map of `concept` (one of g.concepts, case-insensitive), expanded to `size` and min-max normalised."""
    if relative:
        raise ValueError("relative=True does not apply to ConceptAttention maps: they are a softmax over the concepts")
    names = [c.lower() for c in g.concepts]
    key = concept.strip().lower()
    if key not in names:
        raise ValueError(f"concept {concept!r} was not captured; concepts: {', '.join(g.concepts)}")
    return expand(g.maps[names.index(key)], size or g.image_size, normalize)
