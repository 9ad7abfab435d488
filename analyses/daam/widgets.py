"""The notebook's explorer: pick a word, a step range, a layer or resolution, a head, a branch and a threshold; the
overlay and the mask update together, re-sliced from the Cache (the model does not run again).

    ex = Explorer(run, pipe, run.images[0])
    display(ex.box)                     # the widgets and the picture
    ex.update(word="hexagon", steps=(0, 4), layer="8x8", tau=0.3)   # the callback, a plain method tests call

``layer_options(run)`` lists the layer choices: the published set (down+up), every captured layer, each resolution
and each layer alone. Needs a capture with slices=True for steps and branches; a head at the full step range and the
cond branch comes from the published maps, at other steps from capture(head_steps=...) (else the picture says so).
"""
from __future__ import annotations

import html

from lab.widgets import png, set_controls

from .maps import DEFAULT_BLOCKS, TAU, layer_names, prompt_of
from .plot import CMAP, _short, view
from .sources import caches, kept_steps, run_steps, widest
from .words import words


def layer_options(cache) -> list[tuple[str, tuple]]:
    """(label, selection) pairs for a Run (or Cache); a selection is a tuple of (keyword, value) pairs for
    global_maps."""
    every = layer_names(cache, blocks=None)
    cache = widest(cache)
    on_dit = any(n.split(".")[0] in ("transformer_blocks", "single_transformer_blocks") for n in every)
    published = "every joint layer (published)" if on_dit else "down+up (published)"
    opts = [(published, (("blocks", DEFAULT_BLOCKS),)), ("all captured", (("blocks", None),))]
    for r in sorted({tuple(cache.resolution(n)) for n in every}, reverse=True):
        opts.append((f"{r[0]}x{r[1]}", (("blocks", None), ("resolution", r))))
    opts += [(_short(n), (("layers", (n,)),)) for n in every]
    return opts


def selection(cache, layer: str) -> dict:
    """The global_maps keywords of the layer choice labelled `layer`."""
    opts = dict(layer_options(cache))
    if layer not in opts:
        raise ValueError(f"layer choice {layer!r} is not one of: {', '.join(opts)}")
    return dict(opts[layer])


class Explorer:
    """Widgets over one captured image of a Run (or a Cache); ``update(**values)`` redraws (and is what every widget
    change calls)."""

    def __init__(self, cache, tokenizer, image, batch: int = 0, cmap: str = CMAP):
        import ipywidgets as W

        self.cache, self.tokenizer, self.image = cache, tokenizer, image  # a DiT pipeline aligns through its encoders
        self.batch, self.cmap = batch, cmap
        self.prompt = prompt_of(cache, batch)
        self.words = list(dict.fromkeys(w.text.lower() for w in words(self.tokenizer, self.prompt) if w.kept))
        if not self.words:
            raise ValueError(f"the prompt {self.prompt!r} has no words to map")
        every = kept_steps(cache)
        steps = every or widest(cache).meta.get("summed_steps") or [0]
        heads = max((widest(cache).meta.get("heads") or {}).values() or [1])
        branches = sorted({b for c in caches(cache) for b in (c.meta.get("branches") or [])})
        self.w = {
            "word": W.Dropdown(options=self.words, value=self.words[0], description="word"),
            "steps": W.IntRangeSlider(value=(steps[0], steps[-1]), min=steps[0], max=steps[-1],
                                      description="steps", disabled=not every),
            "layer": W.Dropdown(options=[o for o, _ in layer_options(cache)], description="layers"),
            "head": W.Dropdown(options=["all"] + list(range(heads)), description="head"),
            "branch": W.Dropdown(options=branches or ["cond"], description="branch"),
            "tau": W.FloatSlider(value=TAU, min=0.05, max=0.95, step=0.05, description="tau"),
        }
        self.picture = W.Image(format="png")
        self.message = W.HTML()
        self._hold = False
        for widget in self.w.values():
            widget.observe(self._changed, names="value")
        self.box = W.VBox([W.HBox([self.w["word"], self.w["layer"], self.w["head"]]),
                           W.HBox([self.w["steps"], self.w["branch"], self.w["tau"]]), self.picture, self.message])
        self.update()

    def values(self) -> dict:
        """The controls' current values."""
        return {k: w.value for k, w in self.w.items()}

    def _changed(self, change) -> None:
        if not self._hold:
            self.update()

    def update(self, **values):
        """Set the given controls (word, steps=(first, last), layer, head, branch, tau) and redraw once.

        Returns the Figure; a slice that cannot be drawn (e.g. a head a layer does not have) shows its error under
        the picture and returns None.
        """
        self._hold = True
        try:
            set_controls(self.w, values)  # refuses an unknown name before setting anything
        finally:
            self._hold = False
        try:
            fig = render(self.cache, self.tokenizer, self.image, batch=self.batch, cmap=self.cmap, **self.values())
        except ValueError as e:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return None
        self.picture.value = png(fig)
        self.message.value = ""
        return fig


def render(cache, tokenizer, image, word: str, steps=None, layer: str = "down+up (published)", head="all",
           branch: str = "cond", tau: float = TAU, batch: int = 0, cmap: str = CMAP):
    """The explorer's picture for one set of control values: overlay and binarised mask (a matplotlib Figure)."""
    kw = selection(cache, layer)
    step_list, every = None, kept_steps(cache)
    if steps is not None and every:
        first, last = steps
        step_list = [s for s in every if first <= s <= last]
        if step_list == run_steps(widest(cache)):
            step_list = None  # every step of the run: the published maps where they hold the slice
    heads = None if head in (None, "all") else [int(head)]
    return view(cache, tokenizer, image, word, batch=batch, steps=step_list, heads=heads, branch=branch, tau=tau,
                cmap=cmap, **kw)
