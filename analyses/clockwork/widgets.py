"""The notebook's controls: noise one block at one step, or reuse low-resolution blocks; see the image beside the
plain run of the same seed, with the pixel distance and the parser's reading.

    nz = Noiser(pipe, steps=6)
    display(nz.box)
    nz.update(block="up_blocks.2", step=0, r=1.0)   # what the controls call; returns the Figure
    ru = Reuser(pipe, steps=10)
    ru.update(blocks="mid_block", k=3, scene=2)
"""
from __future__ import annotations


import numpy as np
import torch

from lab.widgets import png, set_controls
from lab.hooks import select

from .perturb import Perturbation, perturbed
from .reuse import every, low_resolution_blocks, require_unet, reuse
from .score import moved, reading

ALL_LOW = "low-res blocks"


def compare_figure(plain: np.ndarray, other: np.ndarray, title: str):
    """Two (H, W, 3) uint8 images side by side, the second titled with its distance from the first (a Figure)."""
    from matplotlib.figure import Figure

    m = moved(plain, other)
    fig = Figure(figsize=(5, 3), layout="constrained")
    for ax, image, label in zip(fig.subplots(1, 2), (plain, other), ("plain", title)):
        bg, objs = reading(image)
        ax.imshow(image)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        ax.set_xlabel(f"{' '.join(' '.join(o) for o in objs) or 'no object'} on {bg}", fontsize=7)
    fig.suptitle(f"pixel RMS {m['pixel rms']:.1f}; reading {'changed' if m['reading changed'] else 'kept'}",
                 fontsize=8)
    return fig


def noise_figure(pipe, scene, block: str, step: int, r: float, steps: int = 6):
    """The scene's caption from its seed, plain and with noise of relative size r on `block` at `step`."""
    p = Perturbation(block, int(step), float(r))
    out = perturbed(pipe, [scene.caption], [scene.seed], steps, [p])
    return compare_figure(out["plain"][0], out[p][0], f"noise r={r:g} on {block} at step {step}")


def reuse_figure(pipe, scene, blocks: str, k: int, steps: int = 10):
    """The scene's caption from its seed, plain and with `blocks` (a block or ALL_LOW) run every k-th step."""
    names = low_resolution_blocks(pipe) if blocks == ALL_LOW else [blocks]
    images = []
    for skipped in ([], every(int(k), steps)):
        with reuse(pipe, names, skipped):
            out = pipe(scene.caption, num_inference_steps=steps, output_type="np",
                       generator=torch.Generator(pipe.device).manual_seed(scene.seed)).images  # (1, H, W, 3)
        images.append((out[0] * 255).round().astype(np.uint8))
    return compare_figure(images[0], images[1], f"{blocks} run every {k}")


class _Panel:
    """Widgets over a figure function; ``update(**values)`` sets controls and redraws (the controls call it)."""

    def __init__(self, pipe, steps: int, n: int, controls: dict):
        import ipywidgets as W
        from analyses.pag.score import scenes

        from .study import SEED_BASE

        self.pipe, self.steps, self.scenes = pipe, steps, scenes(n, SEED_BASE)
        self.w = dict(controls, scene=W.IntSlider(value=0, min=0, max=n - 1, description="scene"))
        self.picture = W.Image(format="png")
        for widget in self.w.values():
            widget.observe(lambda _: self.update(), names="value")
        self.box = W.VBox([W.HBox(list(self.w.values())[:2]), W.HBox(list(self.w.values())[2:]), self.picture])
        self.update()

    def update(self, **values):
        set_controls(self.w, values)
        v = {k: w.value for k, w in self.w.items()}
        fig = self.figure(self.scenes[v.pop("scene")], **v)
        self.picture.value = png(fig)
        return fig


class Noiser(_Panel):
    """Controls: block, step, r (noise size relative to the block's output), scene."""

    def __init__(self, pipe, steps: int = 6, n: int = 20):
        import ipywidgets as W
        require_unet(pipe)
        super().__init__(pipe, steps, n, {
            "block": W.Dropdown(options=select(pipe, kind="block"), value="mid_block", description="block"),
            "step": W.IntSlider(value=0, min=0, max=steps - 1, description="step"),
            "r": W.FloatSlider(value=0.5, min=0.0, max=2.0, step=0.1, description="r")})

    def figure(self, scene, block, step, r):
        return noise_figure(self.pipe, scene, block, step, r, self.steps)


class Reuser(_Panel):
    """Controls: blocks (a low-resolution block or all of them), k (run every k-th step), scene."""

    def __init__(self, pipe, steps: int = 10, n: int = 20):
        import ipywidgets as W
        require_unet(pipe)
        super().__init__(pipe, steps, n, {
            "blocks": W.Dropdown(options=low_resolution_blocks(pipe) + [ALL_LOW], value=ALL_LOW,
                                 description="blocks"),
            "k": W.IntSlider(value=2, min=1, max=4, description="run every")})

    def figure(self, scene, blocks, k):
        return reuse_figure(self.pipe, scene, blocks, k, self.steps)
