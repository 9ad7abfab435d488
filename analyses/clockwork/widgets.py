"""The notebook's controls: noise one block at one step, or reuse low-resolution blocks (on a DiT: its middle
blocks' residual); see the image beside the plain run of the same seed, with the pixel distance and the parser's
reading.

    nz = Noiser(pipe, steps=6)
    display(nz.box)
    nz.update(block="up_blocks.2", step=0, r=1.0)   # what the controls call; returns the Figure
    ru = Reuser(pipe, steps=10)
    ru.update(blocks="mid_block", k=3, scene=2)
    Noiser(dit_pipe, steps=4, height=512, width=512)  # keyword arguments go to every pipeline call

A DiT (SD3 / SD3.5, FLUX.1) works too: the Noiser's blocks are its block points (image stream) and starts on the
middle one; the Reuser offers each of its middle blocks and all of them as one span ('middle blocks').
"""
from __future__ import annotations

import numpy as np
import torch

from lab.widgets import png, set_controls
from lab.hooks import select

from .perturb import Perturbation, perturbed
from .reuse import every, group_name, reusable_blocks, reuse
from .score import moved, reading

ALL_LOW = "low-res blocks"  # group_name(pipe) of a UNet: the Reuser's choice of all its reusable blocks


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


def noise_figure(pipe, scene, block: str, step: int, r: float, steps: int = 6, **call_kwargs):
    """The scene's caption from its seed, plain and with noise of relative size r on `block` at `step`."""
    p = Perturbation(block, int(step), float(r))
    out = perturbed(pipe, [scene.caption], [scene.seed], steps, [p], **call_kwargs)
    return compare_figure(out["plain"][0], out[p][0], f"noise r={r:g} on {block} at step {step}")


def reuse_figure(pipe, scene, blocks: str, k: int, steps: int = 10, **call_kwargs):
    """The scene's caption from its seed, plain and with `blocks` (a block, or group_name(pipe) for all of
    reusable_blocks(pipe)) run every k-th step."""
    names = reusable_blocks(pipe) if blocks == group_name(pipe) else [blocks]
    images = []
    for skipped in ([], every(int(k), steps)):
        with reuse(pipe, names, skipped):
            out = pipe(scene.caption, num_inference_steps=steps, output_type="np", **call_kwargs,
                       generator=torch.Generator(pipe.device).manual_seed(scene.seed)).images  # (1, H, W, 3)
        images.append((out[0] * 255).round().astype(np.uint8))
    return compare_figure(images[0], images[1], f"{blocks} run every {k}")


class _Panel:
    """Widgets over a figure function; ``update(**values)`` sets controls and redraws (the controls call it)."""

    def __init__(self, pipe, steps: int, n: int, controls: dict, call_kwargs: dict):
        import ipywidgets as W
        from analyses.pag.score import scenes

        from .study import SEED_BASE

        self.pipe, self.steps, self.scenes, self.call_kwargs = pipe, steps, scenes(n, SEED_BASE), call_kwargs
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
    """Controls: block, step, r (noise size relative to the block's output), scene. call_kwargs go to the pipeline
    (height, width, max_sequence_length, ...)."""

    def __init__(self, pipe, steps: int = 6, n: int = 20, **call_kwargs):
        import ipywidgets as W
        blocks = select(pipe, kind="block")
        super().__init__(pipe, steps, n, {
            "block": W.Dropdown(options=blocks, value="mid_block" if "mid_block" in blocks else
                                blocks[len(blocks) // 2], description="block"),
            "step": W.IntSlider(value=0, min=0, max=steps - 1, description="step"),
            "r": W.FloatSlider(value=0.5, min=0.0, max=2.0, step=0.1, description="r")}, call_kwargs)

    def figure(self, scene, block, step, r):
        return noise_figure(self.pipe, scene, block, step, r, self.steps, **self.call_kwargs)


class Reuser(_Panel):
    """Controls: blocks (a low-resolution block or all of them; on a DiT a middle block or the span of all of them),
    k (run every k-th step), scene. call_kwargs go to the pipeline (height, width, max_sequence_length, ...)."""

    def __init__(self, pipe, steps: int = 10, n: int = 20, **call_kwargs):
        import ipywidgets as W
        group = group_name(pipe)
        super().__init__(pipe, steps, n, {
            "blocks": W.Dropdown(options=reusable_blocks(pipe) + [group], value=group, description="blocks"),
            "k": W.IntSlider(value=2, min=1, max=4, description="run every")}, call_kwargs)

    def figure(self, scene, blocks, k):
        return reuse_figure(self.pipe, scene, blocks, k, self.steps, **self.call_kwargs)
