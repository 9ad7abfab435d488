"""Figures of DAAM maps. Every helper draws on the Axes or Figure it is given (or a new matplotlib.figure.Figure) and
returns it; none touches pyplot or rcParams.

    ax = overlay(image, word_map(g, pipe, "hexagon"), ax=ax, tau=0.4)     # heat over the image, mask outline
    fig = word_grid(image, word_maps(g, pipe))                            # one panel per word
    fig = layer_step_grid(run, pipe, "hexagon", image, n_groups=4)        # layers x step ranges
    fig = view(run, pipe, image, "hexagon", steps=range(5), tau=0.3)      # overlay + binarised mask side by side

cmap: a perceptual colormap by default ('inferno'); any matplotlib name works ('magma', 'viridis', 'jet').
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from .maps import DEFAULT_BLOCKS, TAU, binarize, global_maps, layer_names, word_map
from .sources import kept_steps

CMAP = "inferno"


def _array(x) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def overlay(image, heat, ax=None, cmap: str = CMAP, alpha: float = 0.6, tau: float | None = None,
            title: str | None = None):
    """Draw `heat` (h, w) in [0, 1] over `image` (H, W, 3) on `ax`; with `tau`, outline the binarised mask.

        overlay(run.images[0], m, ax=ax, tau=0.4, title="hexagon")
    """
    if ax is None:
        ax = Figure(figsize=(3, 3), layout="constrained").add_subplot()
    img = _array(image)
    h, w = img.shape[:2]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    ax.imshow(img, extent=extent)
    heat = _array(heat)
    ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
    if tau is not None and heat.max() > tau:
        ys, xs = np.linspace(-0.5, h - 0.5, heat.shape[0]), np.linspace(-0.5, w - 0.5, heat.shape[1])
        ax.contour(xs, ys, heat, levels=[tau], colors="cyan", linewidths=1.0)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if title is not None:
        ax.set_title(title, fontsize=8)
    _clean(ax)
    return ax


def mask_panel(image, mask, ax=None, title: str | None = None):
    """The image where `mask` is True, dimmed elsewhere."""
    if ax is None:
        ax = Figure(figsize=(3, 3), layout="constrained").add_subplot()
    img = _array(image).astype(np.float32) / 255.0
    m = _array(mask).astype(bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} and image {img.shape[:2]} differ in size")
    ax.imshow(np.where(m[..., None], img, 0.15 * img + 0.1))
    if title is not None:
        ax.set_title(title, fontsize=8)
    _clean(ax)
    return ax


def word_grid(image, maps: dict, fig: Figure | None = None, cmap: str = CMAP, tau: float | None = TAU,
              ncols: int = 6) -> Figure:
    """One overlay per word: `maps` is {word: (H, W) map}, e.g. word_maps(g, pipe)."""
    n = len(maps) + 1
    cols = ncols if fig is not None else min(ncols, n)  # in a given (sub)figure keep the columns aligned
    rows = -(-n // cols)
    fig = fig or Figure(figsize=(1.7 * cols, 1.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(_array(image))
    axes[0].set_title("image", fontsize=8)
    _clean(axes[0])
    for ax, (word, heat) in zip(axes[1:], maps.items()):
        overlay(image, heat, ax=ax, cmap=cmap, tau=tau, title=word)
    for ax in axes[n:]:
        ax.axis("off")
    return fig


def _short(name: str) -> str:
    """'up_blocks.1.attentions.0.transformer_blocks.0.attn2' -> 'up1.a0'; a DiT's 'transformer_blocks.3.attn:...'
    -> 'd3', 'single_transformer_blocks.3.attn:...' -> 's3'."""
    parts = name.split(".")
    if parts[0] in ("transformer_blocks", "single_transformer_blocks"):
        return f"{'s' if parts[0].startswith('single') else 'd'}{parts[1]}"
    head = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}.get(parts[0], parts[0])
    if parts[0] == "mid_block":
        return f"mid.a{parts[2]}"
    return f"{head}{parts[1]}.a{parts[3]}" + (f".t{parts[5]}" if len(parts) > 5 and parts[5] != "0" else "")


def layer_step_grid(cache, tokenizer, word: str, image=None, batch: int = 0, n_groups: int = 4,
                    fig: Figure | None = None, cmap: str = CMAP, blocks=None) -> Figure:
    """Rows: each captured layer (then all of them); columns: `n_groups` consecutive step ranges (then all steps).

    `cache`: a Run (or a Cache) with every step kept (capture(slices=True)): step ranges are read with heads
    averaged unless the run kept every head there (head_steps=); "all steps" is the published method. Each panel is
    normalised on its own. blocks: which layers get a row (default all captured; see layer_names); the last row is
    the published set (down+up, or every layer of a DiT).
    """
    names = layer_names(cache, blocks=blocks)
    steps = kept_steps(cache)
    if not steps:
        raise ValueError("this cache summed its steps; capture with slices=True for a layer x step grid")
    groups = [list(g) for g in np.array_split(np.array(steps), min(n_groups, len(steps))) if len(g)]
    cols = [(f"steps {g[0]}-{g[-1]}", [int(s) for s in g]) for g in groups] + [("all steps", None)]
    rows = [(_short(n), {"layers": [n]}) for n in names] + [("published", {"blocks": DEFAULT_BLOCKS})]
    fig = fig or Figure(figsize=(1.5 * len(cols) + 0.6, 1.5 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, (rname, sel) in enumerate(rows):
        for j, (cname, st) in enumerate(cols):
            ax = axes[i, j]
            g = global_maps(cache, batch=batch, steps=st, **sel)
            heat = word_map(g, tokenizer, word)
            if image is not None:
                overlay(image, heat, ax=ax, cmap=cmap)
            else:
                ax.imshow(_array(heat), cmap=cmap, vmin=0, vmax=1)
                _clean(ax)
            if i == 0:
                ax.set_title(cname, fontsize=8)
            if j == 0:
                ax.set_ylabel(rname, fontsize=8)
    fig.suptitle(f"'{word}': layer x steps", fontsize=9)
    return fig


def view(cache, tokenizer, image, word: str, batch: int = 0, occurrence: int | None = None, steps=None,
         layers=None, blocks=DEFAULT_BLOCKS, resolution=None, heads=None, branch: str = "cond", tau: float = TAU,
         cmap: str = CMAP, fig: Figure | None = None) -> Figure:
    """The overlay and the binarised mask of `word` for one slice of a Run (or Cache), side by side (what the
    notebook's explorer shows); the title says when heads were averaged before the clamp (a run.slices slice)."""
    g = global_maps(cache, batch=batch, steps=steps, layers=layers, blocks=blocks, resolution=resolution,
                    heads=heads, branch=branch)
    heat = word_map(g, tokenizer, word, occurrence)
    fig = fig or Figure(figsize=(6, 3.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    overlay(image, heat, ax=a, cmap=cmap, tau=tau, title=f"'{word}'")
    mask_panel(image, binarize(heat, tau), ax=b, title=f"mask, tau = {tau:.2f}")
    what = [f"steps {g.steps[0]}-{g.steps[-1]}" if g.steps else "all steps", f"{len(g.layers)} layers",
            f"heads {list(g.heads)}" if g.heads is not None else
            ("all heads, averaged first" if g.heads_averaged else "all heads"), branch]
    fig.suptitle(", ".join(what), fontsize=8)
    return fig
