"""Click a point on image A, see its best match and the similarity map on image B (notebooks/dift.ipynb).

    view = make_view(pipe, fig, pair_index=0, t=261, block="up_blocks.1", ensemble=8)
    view = make_view(sd3, fig, block="transformer_blocks.12", size=256)   # SD3 / Flux: a transformer block
    box = controls(view)                           # timestep slider, block menu, 'new pair', the canvas; clicks on A
    show_point(view, 40, 60)                       # what a click at (40, 60) on A does
    set_setting(view, t=100, block="up_blocks.2")  # recompute features (what the slider and the menu call)
    new_pair(view, 5)                              # another pair of the study (what the button calls)

View is plain state (pipe, pair, settings, feature maps, axes); the functions change it and redraw. on_click is a
plain function of a matplotlib event, so it can be called with any object that has inaxes, xdata and ydata.
controls(view) wires ipywidgets and the figure's clicks to those functions; the notebook only displays it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import check_block, featurize, menu_blocks
from .match import Pair, similarity
from .plots import QUERY, RIGHT, plot_similarity
from .pairs import world_pairs

SNAP = 4.0  # a click this close (pixels) to a named keypoint of A also shows that keypoint's true match in B


@dataclass
class View:
    pipe: object
    fig: object
    pair: Pair
    pair_index: int
    t: int
    block: str
    ensemble: int
    size: object = "native"  # the pixel size the model sees (featurize's size=)
    fa: object = None
    fb: object = None
    query: tuple[float, float] | None = None
    best: tuple[float, float] | None = None


def make_view(pipe, fig, pair_index: int = 0, t: int = 261, block: str | None = None, ensemble: int = 8,
              size="native") -> View:
    """Lay out three axes on `fig` (A, B with the match, B under the similarity map) and show pair `pair_index`.

    block: a name of menu_blocks(pipe) or any point check_block takes; None: 'up_blocks.1' on a UNet, the middle
    double-stream block on SD3 / Flux. size: featurize's (a DiT's 'native' size is 1024 px)."""
    fig.clear()
    fig.subplots(1, 3)
    view = View(pipe, fig, world_pairs(1, first=pair_index)[0], pair_index, t, check_block(pipe, block), ensemble,
                size)
    _featurize(view)
    _draw(view)
    return view


def _featurize(view: View) -> None:
    view.fa, view.fb = featurize(view.pipe, [view.pair.src, view.pair.trg], t=view.t, block=view.block,
                                 ensemble=view.ensemble, size=view.size)


def _draw(view: View) -> None:
    ax_a, ax_b, ax_s = view.fig.axes[:3]
    for ax in (ax_a, ax_b, ax_s):
        ax.clear(), ax.set_xticks([]), ax.set_yticks([])
    p = view.pair
    ax_a.imshow(p.src), ax_b.imshow(p.trg)
    ax_a.scatter(p.src_kps[:, 0], p.src_kps[:, 1], s=12, c="w", edgecolors="k", linewidths=0.5)
    ax_a.set_title(f"A: {p.name}{' (mirrored)' if p.info['mirrored'] else ''} - click", fontsize=8)
    ax_b.set_title(f"B: best match (t={view.t}, {view.block})", fontsize=8)
    ax_s.set_title("B: cosine similarity", fontsize=8)
    if view.query is None:
        ax_s.imshow(p.trg)
        view.fig.canvas.draw_idle()
        return
    x, y = view.query
    sim = similarity(view.fa, [(x, y)], view.fb)[0].cpu().numpy()  # (H, W)
    by, bx = np.unravel_index(int(sim.argmax()), sim.shape)
    view.best = (float(bx), float(by))
    ax_a.scatter([x], [y], s=50, c=QUERY, edgecolors="k", zorder=3)
    ax_b.scatter([bx], [by], s=50, c=QUERY, edgecolors="k", zorder=3)
    plot_similarity(ax_s, p.trg, sim, view.best)
    near = np.hypot(*(p.src_kps - np.array([x, y])).T)
    if near.min() <= SNAP:  # the click is on a named keypoint: show where it truly is in B
        k = int(near.argmin())
        tx, ty = p.trg_kps[k]
        ax_b.scatter([tx], [ty], s=70, facecolors="none", edgecolors=RIGHT, linewidths=1.5, zorder=2)
        ax_b.set_title(f"B: best match; ring = true {p.info['names'][k]}", fontsize=8)
    view.fig.canvas.draw_idle()


def show_point(view: View, x: float, y: float) -> tuple[float, float]:
    """Match the point (x, y) of A; redraw; return the best match (x, y) in B."""
    h, w = view.fa.image_size
    view.query = (float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1)))
    _draw(view)
    return view.best


def on_click(event, view: View) -> tuple[float, float] | None:
    """The button_press_event handler: a click inside A's axes matches that point; anything else is ignored."""
    if event.inaxes is not view.fig.axes[0] or event.xdata is None or event.ydata is None:
        return None
    return show_point(view, event.xdata, event.ydata)


def set_setting(view: View, t: int | None = None, block: str | None = None) -> None:
    """Change the timestep and/or block, recompute both feature maps and redraw (the same query, if any)."""
    view.t = view.t if t is None else int(t)
    view.block = view.block if block is None else block
    _featurize(view)
    _draw(view)


def new_pair(view: View, pair_index: int | None = None) -> None:
    """Show pair `pair_index` of the study (default: the next one); the query is cleared."""
    view.pair_index = view.pair_index + 1 if pair_index is None else int(pair_index)
    view.pair = world_pairs(1, first=view.pair_index)[0]
    view.query = view.best = None
    _featurize(view)
    _draw(view)


def controls(view: View):
    """The notebook's controls around ``view``: a timestep slider, a block menu (menu_blocks: up_blocks on a UNet,
    every transformer block on SD3 / Flux) and a 'new pair' button above the figure's canvas (ipympl), with clicks on
    A connected. Each control calls set_setting / new_pair / on_click."""
    import ipywidgets as W

    T = view.pipe.scheduler.config.num_train_timesteps
    t_slider = W.IntSlider(value=view.t, min=0, max=T - 1, step=1, description="timestep", continuous_update=False)
    blocks = menu_blocks(view.pipe)
    block_menu = W.Dropdown(options=blocks, value=view.block, description="block")
    button = W.Button(description="new pair")
    t_slider.observe(lambda change: set_setting(view, t=change["new"]), names="value")
    block_menu.observe(lambda change: set_setting(view, block=change["new"]), names="value")
    button.on_click(lambda _: new_pair(view))
    view.fig.canvas.mpl_connect("button_press_event", lambda event: on_click(event, view))
    return W.VBox([W.HBox([t_slider, block_menu, button]), view.fig.canvas])
