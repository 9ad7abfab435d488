"""The notebook's scene picker: choose an attribute and a scene; see the scene and each caption's error curve over t.
The pipeline may run a UNet (SD 1.x / 2.x / SDXL, the built-in models) or a diffusion transformer (SD3, FLUX.1);
the scenes are of the world the model was trained on (lab.world.world_of).

    pk = Picker(pipe, timesteps(10))
    display(pk.box)
    pk.update(attribute="shape", scene=3)      # what the controls call; returns the Figure
"""
from __future__ import annotations

from lab.pipes import family_of
from lab.widgets import png, set_controls
from lab.world import render, world_of

from .binding import ATTRIBUTES, pairs
from .plot import error_curves
from .score import errors, rank


def scene_figure(pipe, pair, ts):
    """The scene, and the error curves of its true and swapped captions (a Figure)."""
    from matplotlib.figure import Figure

    image = render(pair.scene)
    e = errors(pipe, image, [pair.true, pair.swapped], ts, seed=pair.scene.seed)  # (2, T)
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 2])
    ax1.imshow(image)
    ax1.set_xticks([]), ax1.set_yticks([])
    verdict = "right" if rank(e)[0] == 0 else "wrong"
    ax1.set_title(f"ranked {verdict}", fontsize=8)
    error_curves(e, ts, [f"true: {pair.true[:45]}", f"swapped: {pair.swapped[:45]}"], ax=ax2)
    return fig


class Picker:
    """Widgets over scene_figure; ``update(attribute=, scene=)`` redraws (the controls call it)."""

    def __init__(self, pipe, ts, n: int = 20):
        import ipywidgets as W

        family_of(pipe)  # a pipeline with neither a UNet nor an SD3 / Flux transformer is refused here, by name
        self.pipe, self.ts, self.n, self.world = pipe, list(ts), n, world_of(pipe)
        self.w = {"attribute": W.Dropdown(options=list(ATTRIBUTES), description="attribute"),
                  "scene": W.IntSlider(value=0, min=0, max=n - 1, description="scene")}
        self.picture = W.Image(format="png")
        for widget in self.w.values():
            widget.observe(lambda _: self.update(), names="value")
        self.box = W.VBox([W.HBox(list(self.w.values())), self.picture])
        self.update()

    def update(self, **values):
        """Set the given controls (attribute, scene) and redraw; returns the Figure."""
        set_controls(self.w, values)
        pair = pairs(self.n, self.w["attribute"].value, world=self.world)[self.w["scene"].value]
        fig = scene_figure(self.pipe, pair, self.ts)
        self.picture.value = png(fig)
        return fig
