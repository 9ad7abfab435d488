"""The schedules notebook's figures and controls as plain functions, so a test can call them without a browser.

    >>> from analyses import schedules as S
    >>> from analyses.schedules.views import schedule_figure, schedule_explorer, Scrubber
    >>> fig = schedule_figure(S.published_schedules(), "sd-1.5", "leading", 10, zero_snr=False)
    >>> box = schedule_explorer(S.published_schedules(), steps=10)     # doctest: +SKIP
    >>> scrub = Scrubber(pipes, "a large red circle on a white background", seed=0, steps=25)   # doctest: +SKIP
    >>> scrub.figure(step=0), scrub.label(step=0); scrub.generate(model="shapes-zsnr"); scrub.box  # doctest: +SKIP

schedule_figure(schedules, name, spacing, steps, zero_snr)   log-SNR of a schedule and the timesteps a spacing visits
schedule_explorer(schedules, steps)        schedule menu, spacing buttons, steps slider, zero-SNR box -> the figure
step_figure(run, step) / step_label(run, step)   x_t, x0-hat and the per-band error of a followed run at one step
Scrubber(pipes, prompt, seed, steps)        state (the run) + the step scrubber's widgets; .generate() follows again
"""
from __future__ import annotations

from matplotlib.figure import Figure

from .maths import SPACINGS, first_step_snr, with_zero_terminal_snr
from .plots import BAND_NAMES, plot_snr, plot_spacings
from .trajectory import Run, follow


def schedule_figure(schedules: dict, name: str, spacing: str, steps: int, zero_snr: bool) -> Figure:
    """log-SNR of ``schedules[name]`` (and its zero-terminal-SNR rescale) beside the timesteps ``spacing`` visits in
    ``steps`` steps, on the rescaled schedule when ``zero_snr``."""
    schedule = schedules[name]
    if zero_snr:
        schedule = with_zero_terminal_snr(schedule)
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_snr({name: schedules[name], "zero terminal SNR": with_zero_terminal_snr(schedules[name])}, ax=left)
    plot_spacings(schedule, steps, ax=right, spacings=(spacing,))
    first = first_step_snr(schedule, steps, spacing)
    right.set_title(f"{spacing}, {steps} steps\nfirst SNR {first:.2e}, terminal SNR {schedule.terminal_snr:.2e}")
    return fig


def _show(out, fig) -> None:
    from IPython.display import display
    out.clear_output(wait=True)
    with out:
        display(fig)


def schedule_explorer(schedules: dict, steps: int = 10, name: str = "sd-1.5"):
    """Controls (schedule menu, steps slider, zero-SNR box, spacing buttons) above an Output that shows
    schedule_figure for their values; returns the VBox."""
    import ipywidgets as W
    out = W.Output()
    controls = dict(
        name=W.Dropdown(options=list(schedules), value=name, description="schedule"),
        spacing=W.ToggleButtons(options=list(SPACINGS), value="leading"),
        steps=W.IntSlider(value=steps, min=2, max=100, description="steps"),
        zero_snr=W.Checkbox(value=False, description="zero terminal SNR"),
    )
    W.interactive_output(lambda **kwargs: _show(out, schedule_figure(schedules, **kwargs)), controls)
    return W.VBox([W.HBox([controls["name"], controls["steps"], controls["zero_snr"]]), controls["spacing"], out])


def step_figure(run: Run, step: int) -> Figure:
    """x_t and x0-hat at ``step`` (0-based), and the per-band error curves with the step marked."""
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    a, b, c = fig.subplots(1, 3, width_ratios=[1, 1, 1.6])
    a.imshow(run.xt_images[step]), a.set_title(f"x_t, t = {int(run.timesteps[step])}", fontsize=9)
    b.imshow(run.x0_images[step]), b.set_title("x0-hat (predicted clean image)", fontsize=9)
    for ax in (a, b):
        ax.set_xticks([]), ax.set_yticks([])
    for k, name in enumerate(BAND_NAMES[:run.band_error.shape[1]]):
        c.plot(range(1, run.steps + 1), run.band_error[:, k], marker="o", ms=3, label=name)
    c.axvline(step + 1, color="k", lw=1)
    c.set(yscale="log", xlabel="step", ylabel="error vs final image", title="x0-hat per frequency band")
    c.legend(fontsize=8)
    return fig


def step_label(run: Run, step: int) -> str:
    """'step 3/25: t = ..., alpha-bar = ..., step size ..., mean brightness of x0-hat ...' (0-based ``step``)."""
    return (f"step {step + 1}/{run.steps}: t = {int(run.timesteps[step])}, alpha-bar = {float(run.alphas[step]):.4f}, "
            f"step size {float(run.step_size[step]):.3f}, mean brightness of x0-hat "
            f"{run.x0_images[step].mean() / 255:.2f}")


class Scrubber:
    """One followed generation per model, prompt and seed, and the widgets that scrub through its steps.

    pipes: {model name: pipeline}, UNet ones and SD3 / Flux ones alike (follow keeps both); the zero-terminal-SNR
    model ('shapes-zsnr') is followed with CFG rescale 0.7. ``call``: more pipeline arguments for every model, e.g.
    height=, width= (Flux draws at 1024 px by default) or max_sequence_length= (T5's window; DiT pipelines only).
    ``box`` is the VBox to display (classes lab-scrubber, lab-scrubber-step, -model, -generate, -label).
    """

    def __init__(self, pipes: dict, prompt: str, seed: int = 0, steps: int = 25, model: str | None = None, **call):
        self.pipes, self.steps, self.call = pipes, steps, call
        self.model = model or next(iter(pipes))
        self.run = self.follow(self.model, prompt, seed)
        self._box = None

    def follow(self, model: str, prompt: str, seed: int) -> Run:
        call = dict(self.call, guidance_rescale=0.7) if model == "shapes-zsnr" else self.call
        return follow(self.pipes[model], prompt, seed=seed, num_inference_steps=self.steps, **call)

    def figure(self, step: int) -> Figure:
        return step_figure(self.run, step)

    def label(self, step: int) -> str:
        return step_label(self.run, step)

    def generate(self, model: str | None = None, prompt: str | None = None, seed: int | None = None) -> Run:
        """Follow a new generation (any of model, prompt, seed changed) and keep it as the run shown."""
        self.model = model or self.model
        self.run = self.follow(self.model, prompt or self.run.prompt, self.run.seed if seed is None else seed)
        if self._box is not None:
            self._redraw()
        return self.run

    @property
    def box(self):
        """The widgets: model menu, prompt, seed and 'generate' above the step slider, its label and the figure."""
        if self._box is None:
            import ipywidgets as W
            self.scrub = W.IntSlider(value=1, min=1, max=self.run.steps, description="step").add_class(
                "lab-scrubber-step")
            self.model_menu = W.Dropdown(options=list(self.pipes), value=self.model, description="model").add_class(
                "lab-scrubber-model")
            self.prompt = W.Text(value=self.run.prompt, description="prompt", layout=W.Layout(width="480px"))
            self.seed = W.IntText(value=self.run.seed, description="seed", layout=W.Layout(width="140px"))
            self.button = W.Button(description="generate").add_class("lab-scrubber-generate")
            self.text = W.Label().add_class("lab-scrubber-label")
            self.out = W.Output()
            self.scrub.observe(lambda _: self._redraw(), names="value")
            regenerate = lambda *_: self.generate(self.model_menu.value, self.prompt.value, self.seed.value)  # noqa: E731
            self.model_menu.observe(regenerate, names="value")
            self.button.on_click(regenerate)
            self._box = W.VBox([W.HBox([self.model_menu, self.prompt, self.seed, self.button]), self.scrub,
                                self.text, self.out]).add_class("lab-scrubber")
            self._redraw()
        return self._box

    def _redraw(self) -> None:
        step = min(self.scrub.value, self.run.steps) - 1
        self.text.value = self.label(step)
        _show(self.out, self.figure(step))
