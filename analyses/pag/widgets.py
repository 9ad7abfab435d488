"""The notebook's guide: pick the perturbed layers and the PAG and CFG scales; see the caption drawn from one seed
without PAG and with it, side by side, and the parser's verdict on each.

    gd = Guide(pipe, steps=10)
    display(gd.box)
    gd.update(layers="up", scale=5.0, cfg=0.0, scene=2)   # what the controls call; returns the Figure

On SD3 / Flux the layer choices are the DiT's ('mid', 'all'; analyses.pag.dit); on FLUX.1 the CFG slider is dev's
embedded guidance (there is no unconditional branch).
"""
from __future__ import annotations


import numpy as np

from lab.pipes import family_of
from lab.widgets import png, set_controls

from .guidance import generate, groups, layers
from .score import scenes, verdict


def pair_figure(pipe, scene, layers: str = "mid", scale: float = 3.0, cfg: float = 0.0, steps: int = 10,
                size: int | None = None):
    """The scene's caption from its seed without PAG and with it (a Figure), each titled with the parser's verdict;
    size: pixels a side (default the pipeline's)."""
    from matplotlib.figure import Figure

    shown = {}
    for label, s in (("no PAG", 0.0), (f"PAG {layers} x {scale:g}", scale)):
        image = generate(pipe, [scene.caption], [scene.seed], steps=steps, guidance=cfg, pag_scale=s, layers=layers,
                         height=size, width=size)
        shown[label] = (image[0] * 255).round().astype(np.uint8)  # (H, W, 3)
    fig = Figure(figsize=(5, 2.9), layout="constrained")
    for ax, (label, image) in zip(fig.subplots(1, 2), shown.items()):
        v = verdict(scene, image)
        ax.imshow(image)
        ax.set_xticks([]), ax.set_yticks([])
        wrong = [c for c in ("colour", "shape", "size", "one object") if not v[c]]
        ax.set_title(f"{label}\n{'clean' if v['clean'] else 'wrong: ' + ', '.join(wrong)}", fontsize=8)
    what = "guidance" if family_of(pipe) == "flux" else "CFG"
    fig.suptitle(f"{scene.caption} ({what} {cfg:g})", fontsize=8)
    return fig


class Guide:
    """Widgets over pair_figure; ``update(layers=, scale=, cfg=, scene=)`` redraws (the controls call it). size:
    pixels a side (default the pipeline's)."""

    def __init__(self, pipe, steps: int = 10, n: int = 20, size: int | None = None):
        import ipywidgets as W

        layers(pipe, "mid")  # refuses a pipeline lab.hooks does not know, by name, before any widget is made
        self.pipe, self.steps, self.size, self.scenes = pipe, steps, size, scenes(n)
        cfg = "guidance" if family_of(pipe) == "flux" else "CFG scale"
        self.w = {"layers": W.Dropdown(options=list(groups(pipe)), value="mid", description="layers"),
                  "scale": W.FloatSlider(value=3.0, min=0.0, max=8.0, step=0.5, description="PAG scale"),
                  "cfg": W.FloatSlider(value=0.0, min=0.0, max=10.0, step=0.5, description=cfg),
                  "scene": W.IntSlider(value=0, min=0, max=n - 1, description="scene")}
        self.picture = W.Image(format="png")
        for widget in self.w.values():
            widget.observe(lambda _: self.update(), names="value")
        self.box = W.VBox([W.HBox([self.w["layers"], self.w["scene"]]), W.HBox([self.w["scale"], self.w["cfg"]]),
                           self.picture])
        self.update()

    def update(self, **values):
        """Set the given controls (layers, scale, cfg, scene) and redraw; returns the Figure."""
        set_controls(self.w, values)
        v = {k: w.value for k, w in self.w.items()}
        fig = pair_figure(self.pipe, self.scenes[v["scene"]], v["layers"], v["scale"], v["cfg"], self.steps,
                          self.size)
        self.picture.value = png(fig)
        return fig
