"""The notebook's editor: type the edit, pick the method and the injected steps, see source and edit side by side.

    ed = Editor(pipe, "a small red circle to the left of a large blue square on a white background", steps=25)
    display(ed.box)                                         # the controls, a button and the picture
    ed.update(target="a small green circle to the left of a large blue square on a white background",
              method="swap", cross_steps=20, self_steps=10, blend="circle")   # what the button calls

A refused edit (a word not in the prompt, prompts that do not align) shows its message, with the words the tokenizer
sees, under the picture; ``update`` returns None then. It runs on UNet pipelines and on SD3 / FLUX.1 (see
analyses.p2p.control for what the controls mean there); keyword arguments after `seed` go to every pipe() call:

    ed = Editor(sd3, "a red square", "a blue square", steps=28, max_sequence_length=77)
"""
from __future__ import annotations

import html

from lab.pipes import family_of
from lab.widgets import png, set_controls

from .align import METHODS
from .control import Control, Request, generate
from .plot import side_by_side


def edit_figure(pipe, source: str, target: str, method: str = "swap", cross_steps: int = 20, self_steps: int = 10,
                blend: str = "", reweight: str = "", factor: float = 2.0, steps: int = 25, seed: int = 0,
                **call_kwargs):
    """Source, the controlled edit and the uncontrolled target from one seed (a Figure). blend: space-separated
    words for local blending ('' for none); reweight: a target word whose attention is scaled by `factor`;
    call_kwargs go to pipe() (height, width, max_sequence_length)."""
    words = tuple(blend.split())
    request = Request(source, target, method, reweight={reweight: factor} if reweight.strip() else None,
                      blend=words)
    control = Control(int(cross_steps), int(self_steps), blend=bool(words), label=f"{method} ({cross_steps}/"
                      f"{self_steps} steps)")
    out = generate(pipe, [request], [control], steps=steps, seed=seed, plain=True, **call_kwargs)
    fig = side_by_side(out, captions=None)
    fig.suptitle(f"{source}\n-> {target}", fontsize=8)
    return fig


class Editor:
    """Widgets over edit_figure; ``update(**values)`` sets controls and redraws (the button calls it)."""

    def __init__(self, pipe, source: str, target: str | None = None, steps: int = 25, seed: int = 0, **call_kwargs):
        import ipywidgets as W

        family_of(pipe)  # a pipeline lab.hooks runs on (UNet, SD3, FLUX.1), else refused by name before any widget
        self.pipe, self.steps, self.seed, self.call_kwargs = pipe, steps, seed, call_kwargs
        self.w = {
            "source": W.Text(value=source, description="source", layout=W.Layout(width="95%")),
            "target": W.Text(value=target or source, description="edit", layout=W.Layout(width="95%")),
            "method": W.Dropdown(options=list(METHODS), value="swap", description="method"),
            "cross_steps": W.IntSlider(value=round(0.8 * steps), min=0, max=steps, description="cross steps"),
            "self_steps": W.IntSlider(value=round(0.4 * steps), min=0, max=steps, description="self steps"),
            "blend": W.Text(value="", description="blend words"),
            "reweight": W.Text(value="", description="reweight word"),
            "factor": W.FloatSlider(value=2.0, min=-2.0, max=5.0, step=0.25, description="factor"),
        }
        self.button = W.Button(description="edit")
        self.button.on_click(lambda _: self.update())
        self.picture = W.Image(format="png")
        self.message = W.HTML()
        self.box = W.VBox([self.w["source"], self.w["target"],
                           W.HBox([self.w["method"], self.w["cross_steps"], self.w["self_steps"]]),
                           W.HBox([self.w["blend"], self.w["reweight"], self.w["factor"]]),
                           self.button, self.picture, self.message])

    def values(self) -> dict:
        return {k: w.value for k, w in self.w.items()}

    def update(self, **values):
        """Set the given controls (source, target, method, cross_steps, self_steps, blend, reweight, factor), run the
        edit and show it; returns the Figure, or None when the edit is refused (the message says why)."""
        set_controls(self.w, values)
        try:
            fig = edit_figure(self.pipe, steps=self.steps, seed=self.seed, **self.values(), **self.call_kwargs)
        except ValueError as e:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return None
        self.picture.value = png(fig)
        self.message.value = ""
        return fig
