"""A small CLIP trained contrastively on world-2 renders and their captions: Stable Diffusion's text encoder, in small.

    python -m lab.world.train clip --run runs/clip --minutes 120          # train (checkpoints; run again to resume)
    python -m lab.world.train clip-eval --run runs/clip                   # zero-shot retrieval on unseen scenes
    python -m lab.world.train clip-export --run runs/clip --out runs/clip/export

    >>> from lab.world.clip import clip_config, retrieval
    >>> from transformers import CLIPModel
    >>> model = CLIPModel(clip_config(width=32, layers=1))
    >>> sorted(retrieval(model, n=8))                                   # doctest: +SKIP
    ['background', 'colour', 'shape', 'top-1 of 8']

API: ``clip_config(width, layers)``, ``train_clip(run, ...)`` (the ``clip`` stage), ``embed_images``/``embed_texts``,
``retrieval(model, n)``, ``swapped(scene, attribute)`` (captions that differ in one attribute), ``hard_negative(scene)``
(one of them, for training with ``--negatives``), ``export(run, out)``.

The model is a transformers ``CLIPModel``; its text tower is a ``CLIPTextModel`` (same weights, ``export`` writes it
as ``text_encoder/``) that reads the real CLIP BPE tokens, so a diffusion UNet can later condition on its frozen
``last_hidden_state`` exactly as Stable Diffusion conditions on CLIP's.

Sizes, and why. The token embedding dominates the text tower: CLIP's 49,408-token vocabulary times the width.
At width 128 it is 6.3M parameters, 12.1 MiB in float16, and the four layers add 0.8M (1.5 MiB), which leaves about
half of a shipped model's 30 MiB for the UNet and VAE; width 256 would spend 24 MiB on the embedding alone. Captions
are short and their grammar fixed, so depth beyond four layers buys little. The image tower is CLIP's own vision
transformer (patch 16 on the 128 px renders: 8x8 patches, width 128, 4 layers): the standard ``CLIPModel`` keeps
one loadable folder and the attention maps a later study may want; it is not shipped with the diffusion model, so
its size does not count against the budget. Colour, shape and size survive 16 px patches (a small object spans
about 2x2 of them).

Data. A pool of ``pool`` training scenes (world 2, split "train", seeds 0, 1, ...) is rendered once; each step
replaces ``refresh`` of them with scenes of new seeds (the scene of seed s lives in slot s mod pool), so the model
keeps seeing fresh scenes and a resumed run rebuilds exactly the pool it left.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import backgrounds
from .scenes import COLOURS, SHAPES, Scene, caption_of, make_scene, render

EVAL_SEED = 3_000_000  # retrieval scenes: test split, seeds from here (training uses the train split from 0)
ATTRIBUTES = ("colour", "shape", "background")


def clip_config(width: int = 128, layers: int = 4, heads: int | None = None):
    """CLIPConfig of both towers at this width and depth (text: CLIP's vocabulary and 77 positions)."""
    from transformers import CLIPConfig
    heads = heads or max(1, width // 32)
    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    text = common | dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407)
    vision = common | dict(image_size=128, patch_size=16, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)


# ---------------------------------------------------------------------------------------------------- embeddings
def _pixels(images: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    return x.float() / 127.5 - 1.0


def _crop(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids cut after the longest caption's end token: padding is the end token, and the text tower is causal,
    so what follows the first end token changes nothing that is read."""
    ends = (ids == 49407).int().argmax(-1)  # (B,)
    return ids[:, :int(ends.max()) + 1]


def embed_images(model, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """(N, D) unit-norm image embeddings of (N, H, W, 3) uint8 images."""
    device, out = next(model.parameters()).device, []
    for i in range(0, len(images), batch):
        pooled = model.vision_model(pixel_values=_pixels(images[i:i + batch], device)).pooler_output  # (B, width)
        out.append(F.normalize(model.visual_projection(pooled), dim=-1))  # (B, D)
    return torch.cat(out)


def embed_texts(model, captions: list[str], batch: int = 512) -> torch.Tensor:
    """(N, D) unit-norm caption embeddings."""
    from .train import token_ids
    device, out = next(model.parameters()).device, []
    for i in range(0, len(captions), batch):
        ids = _crop(torch.from_numpy(token_ids(captions[i:i + batch])).long().to(device))  # (B, L)
        pooled = model.text_model(input_ids=ids).pooler_output  # (B, width): the end token's state
        out.append(F.normalize(model.text_projection(pooled), dim=-1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------- evaluation
def swapped(scene: Scene, attribute: str) -> list[str]:
    """Captions of the scene with one object's colour or shape, or the background, changed (every alternative)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r} is not one of {ATTRIBUTES}")
    out = []
    if attribute == "background":
        return [caption_of(scene.objects, b, scene.relation) for b in backgrounds.NAMES if b != scene.background]
    for i, obj in enumerate(scene.objects):
        values = COLOURS if attribute == "colour" else SHAPES
        for v in values:
            if v == getattr(obj, attribute):
                continue
            new = dataclasses.replace(obj, **{attribute: v})
            if attribute == "shape":
                new = dataclasses.replace(new, direction=("right" if v == "arrow" else None))
            objects = scene.objects[:i] + (new,) + scene.objects[i + 1:]
            caption = caption_of(objects, scene.background, scene.relation)
            if caption != scene.caption:
                out.append(caption)
    return out


def hard_negative(scene: Scene) -> str:
    """One caption of `scene` with an object's shape (or colour) swapped, chosen by the scene's seed (NegCLIP-style
    hard negative: the binding of attributes to objects is what contrastive training on whole captions misses)."""
    rng = np.random.default_rng(scene.seed + 7_777_777)
    first = "shape" if rng.random() < 0.5 else "colour"
    options = swapped(scene, first) or swapped(scene, "colour" if first == "shape" else "shape")
    return options[int(rng.integers(len(options)))]


@torch.no_grad()
def retrieval(model, n: int = 500, first_seed: int = EVAL_SEED) -> dict[str, float]:
    """Zero-shot caption retrieval on n unseen world-2 scenes (test split).

    ``top-1 of n``: each image picks its caption among the n scenes' captions (right when the picked caption's text
    is its own). ``colour`` / ``shape`` / ``background``: each image picks among its own caption and every caption
    that differs from it in that one attribute (one object's colour, one object's shape, or the background).
    """
    model.eval()
    scenes = [make_scene(first_seed + i, "test", world=2) for i in range(n)]
    images = embed_images(model, np.stack([render(s) for s in scenes]))  # (n, D)
    captions = [s.caption for s in scenes]
    texts = embed_texts(model, captions)  # (n, D)
    picked = (images @ texts.T).argmax(1).tolist()
    out = {f"top-1 of {n}": float(np.mean([captions[j] == c for j, c in zip(picked, captions)]))}
    for attribute in ATTRIBUTES:
        right = []
        for s, image in zip(scenes, images):
            candidates = embed_texts(model, [s.caption] + swapped(s, attribute))  # (1 + k, D)
            right.append(int((candidates @ image).argmax()) == 0)
        out[attribute] = float(np.mean(right))
    return out


# ---------------------------------------------------------------------------------------------------- training
class Pool:
    """``size`` training scenes as uint8 images and token ids; the scene of seed s lives in slot s mod size.

    With ``negatives``, each slot also holds the token ids of a hard negative: the scene's caption with one object's
    shape (or, half the time, colour) swapped, drawn from the scene's own seed, so a rebuilt pool is the same.
    """

    def __init__(self, size: int, next_seed: int, negatives: bool = False):
        from .train import token_ids
        self.size, self.next_seed, self._ids, self.negatives = size, next_seed, token_ids, negatives
        self.images = np.zeros((size, 128, 128, 3), np.uint8)
        self.ids = np.zeros((size, 77), np.int64)
        self.negative_ids = np.zeros((size, 77), np.int64) if negatives else None
        if next_seed == 0:  # a new run
            self.refresh(size)
        for start in range(max(0, next_seed - size), next_seed, 1000):  # a resumed one: the pool it left
            self._put(range(start, min(start + 1000, next_seed)))

    def _put(self, seeds: range) -> None:
        scenes = [make_scene(s, "train", world=2) for s in seeds]
        slots = [s % self.size for s in seeds]
        self.images[slots] = np.stack([render(s) for s in scenes])
        self.ids[slots] = self._ids([s.caption for s in scenes])
        if self.negatives:
            self.negative_ids[slots] = self._ids([hard_negative(s) for s in scenes])

    def refresh(self, k: int) -> None:
        """Replace the k oldest scenes with scenes of new seeds."""
        for start in range(self.next_seed, self.next_seed + k, 1000):
            self._put(range(start, min(start + 1000, self.next_seed + k)))
        self.next_seed += k


def train_clip(run: Path, minutes: float, steps: int, batch: int = 256, lr: float = 5e-4, every: float = 300.0,
               pool: int = 20_000, refresh: int = 8, width: int = 128, layers: int = 4, eval_n: int = 500,
               negatives: bool = False) -> None:
    """The ``clip`` stage: contrastive training with checkpoint and resume; at the end, ``retrieval`` is logged.

    negatives: each image is also scored against its own hard negative (``hard_negative``), as extra columns of
    the image-to-text softmax; kept in the checkpoint, so a resumed run trains as it started unless told."""
    from transformers import CLIPModel
    from .loop import Clock, _log
    from .train import _device, _save
    device = _device()
    run.mkdir(parents=True, exist_ok=True)
    ckpt, step, next_seed = run / "clip.ckpt", 0, 0
    state = torch.load(ckpt, map_location=device) if ckpt.exists() else None
    if state is not None:
        width, layers, step, next_seed = state["width"], state["layers"], state["step"], state["next_seed"]
        negatives = negatives or state.get("negatives", False)
    model = CLIPModel(clip_config(width, layers)).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    if state is not None:
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
    t0 = time.time()
    data = Pool(pool, next_seed, negatives)
    _log(run, stage="clip-data", pool=pool, next_seed=data.next_seed, seconds=round(time.time() - t0, 1))
    clock, gen = Clock(minutes, steps, every), torch.Generator().manual_seed(step)

    def save() -> None:
        _save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "next_seed": data.next_seed,
               "width": width, "layers": layers, "negatives": negatives}, ckpt)

    losses = []
    model.train()
    while not clock.done(step):
        idx = torch.randint(0, pool, (batch,), generator=gen).numpy()
        ids = _crop(torch.from_numpy(data.ids[idx]).to(device))  # (B, L)
        x = _pixels(data.images[idx], device)  # (B, 3, 128, 128)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200)  # warm-up
        img = F.normalize(model.visual_projection(model.vision_model(pixel_values=x).pooler_output), dim=-1)
        txt = F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)  # (B, D)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, B): image i against caption j
        same = torch.from_numpy(data.ids[idx][:, None] == data.ids[idx][None]).all(-1).to(device)  # equal captions
        target = same.float() / same.sum(1, keepdim=True)  # a caption shared by several images is right for each
        to_text = logits
        if negatives:
            neg = _crop(torch.from_numpy(data.negative_ids[idx]).to(device))  # (B, L)
            neg = F.normalize(model.text_projection(model.text_model(input_ids=neg).pooler_output), dim=-1)
            hard = model.logit_scale.exp() * (img * neg).sum(-1, keepdim=True)  # (B, 1): image i, its own negative
            to_text = torch.cat([logits, hard], dim=1)  # (B, B + 1)
            target = torch.cat([target, torch.zeros_like(hard)], dim=1)
        loss = (torch.sum(-target * to_text.log_softmax(1), 1).mean()
                + torch.sum(-target[:, :batch] * logits.T.log_softmax(1), 1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        losses.append(loss.item())
        data.refresh(refresh)
        if step % 25 == 0:
            _log(run, stage="clip", step=step, loss=round(float(np.mean(losses)), 4),
                 scale=round(model.logit_scale.exp().item(), 2), seen=data.next_seed)
            losses = []
        if clock.checkpoint_due():
            save()
    save()
    _log(run, stage="clip", step=step, done=True, minutes=round((time.time() - clock.start) / 60, 2))
    if eval_n:
        _log(run, stage="clip-eval", step=step, **retrieval(model, eval_n))


def load(run: Path):
    """The CLIPModel of a run's checkpoint."""
    from transformers import CLIPModel
    state = torch.load(Path(run) / "clip.ckpt", map_location="cpu")
    model = CLIPModel(clip_config(state["width"], state["layers"]))
    model.load_state_dict(state["model"])
    return model.eval()


def export(run: Path, out: Path) -> Path:
    """Write the run's model as ``out/clip`` (CLIPModel) and its text tower as ``out/text_encoder`` (CLIPTextModel)."""
    from transformers import CLIPTextModel
    from .train import _save_folders
    model = load(run)
    text = CLIPTextModel(model.config.text_config)
    getattr(text, "text_model", text).load_state_dict(model.text_model.state_dict())  # transformers 4 wraps it
    Path(out).mkdir(parents=True, exist_ok=True)
    _save_folders(Path(out), clip=model, text_encoder=text)
    return Path(out)
