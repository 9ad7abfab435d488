"""The guided tour of Stable Diffusion (notebooks/tour.ipynb): capture once, explore many, on any SD 1.x / 2.x pipeline
(SD3 / SD3.5 through lab.tour_flow; FLUX.1's text only).

    >>> import lab, lab.tour as tour
    >>> pipe = lab.load("shapes")
    >>> rows = tour.tokens(pipe, "a red circle")              # [Token(position, text, id, role)], 77 rows
    >>> run = tour.denoise(pipe, "a red circle", seed=0, steps=4)
    >>> run.latents.shape, run.eps_cond.shape, run.images.shape
    (torch.Size([5, 4, 16, 16]), torch.Size([4, 4, 16, 16]), (4, 128, 128, 3))
    >>> fig = tour.step_figure(run, step=2, guidance=3.0)     # indexes stored tensors; the UNet does not run

tokens / token_table / embed / similarity / text_figure   1. the prompt as the text encoder sees it
denoise -> Trajectory / step_figure                     2. the denoising loop, every step kept
divergence / compare_figure                               3. two prompts from the same noise
text_explorer / step_explorer / compare_explorer          ipywidgets around the figure functions above

denoise is the pipeline's loop written out for teaching; lab.trajectory.record keeps the same steps of an ordinary
pipeline call (any scheduler, SDXL), and predict_x0 / decode come from there.

Memory of a Trajectory (fp32): 4 latent-sized tensors per step (for SD1.5 at 512 px: 64 KiB each) plus one decoded
image per step (uint8, 768 KiB at 512 px): ~25 MiB for 25 steps; 2 MiB for the built-in model.
"""
from __future__ import annotations

import html

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from .trajectory import decode, predict_x0

DIVERGING = "RdBu_r"  # latents and noise are signed: blue < 0 < red


# ---------------------------------------------------------------- 1. text

@dataclass
class Token:
    position: int
    text: str      # as the tokenizer writes it: 'red</w>' (</w> ends a word)
    id: int
    role: str      # "start", "word", "end" or "padding"
    encoder: str = "CLIP"  # whose window the position is in: SD3 reads CLIP's 77 then T5's, Flux T5's alone


def _on_dit(pipe, flow_options: dict) -> bool:
    """True for an SD3 / Flux pipeline (the tour's transformer half is lab.tour_flow); on a UNet pipeline the
    options that only a transformer takes (max_sequence_length: T5's window) are refused."""
    if getattr(pipe, "transformer", None) is not None:
        return True
    if flow_options:
        raise ValueError(f"{', '.join(sorted(flow_options))}= apply to SD3 / Flux pipelines; {type(pipe).__name__} "
                         f"takes prompt, seed, steps, guidance, negative_prompt")
    return False


def tokens(pipe, prompt: str, **flow_options) -> list[Token]:
    """Every position the text encoder reads (77 for CLIP): start token, the words' tokens, end token, padding.

    On SD3 the transformer reads CLIP's 77 positions then T5's (``max_sequence_length``, 256 by default), on Flux
    T5's alone (512): lab.tour_flow.flow_tokens, each row's ``encoder`` says whose window it is in."""
    if _on_dit(pipe, flow_options):
        from .tour_flow import flow_tokens
        return flow_tokens(pipe, prompt, **flow_options)
    tok = pipe.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    end = ids.index(tok.eos_token_id, 1)  # the first end token after the start token
    roles = ["start" if i == 0 else "word" if i < end else "end" if i == end else "padding" for i in range(len(ids))]
    return [Token(i, t, d, r) for i, (t, d, r) in enumerate(zip(tok.convert_ids_to_tokens(ids), ids, roles))]


def _windows(rows: list[Token]) -> dict[str, list[Token]]:
    """The rows of each text encoder's window, in order (one window, CLIP's, on a UNet pipeline)."""
    out: dict[str, list[Token]] = {}
    for r in rows:
        out.setdefault(r.encoder, []).append(r)
    return out


def _shown(rows: list[Token], padding_shown: int) -> list[int]:
    """Indices into `rows` of what the table and the figure show: in each window, every row but the padding, and the
    first `padding_shown` padding rows."""
    keep = []
    for part in _windows(rows).values():
        pads = [r for r in part if r.role == "padding"]
        keep += [r.position for r in part if r.role != "padding"] + [r.position for r in pads[:padding_shown]]
    first = rows[0].position if rows else 0
    return sorted(p - first for p in keep)


def token_table(rows: list[Token], padding_shown: int = 2) -> str:
    """A plain-text table of the tokens; in each encoder's window all but `padding_shown` padding rows are
    summarised in one line (an SD3 / Flux pipeline's windows are each headed by the encoder's name)."""
    lines = [f"{'pos':>4}  {'token':<18} {'id':>6}  role"]
    windows = _windows(rows)
    for encoder, part in windows.items():
        if list(windows) != ["CLIP"]:
            lines.append(f"{encoder} window, positions {part[0].position}-{part[-1].position}:")
        pads = [r for r in part if r.role == "padding"]
        shown = [r for r in part if r.role != "padding"] + pads[:padding_shown]
        lines += [f"{r.position:>4}  {r.text:<18} {r.id:>6}  {r.role}" for r in shown]
        if len(pads) > padding_shown:
            rest = pads[padding_shown:]
            lines.append(f"{'...':>4}  {len(rest)} more padding, positions {rest[0].position}-{rest[-1].position}")
    return "\n".join(lines)


@torch.no_grad()
def embed(pipe, prompt: str, **flow_options) -> torch.Tensor:
    """The text encoder's output for `prompt`: (tokens, width), e.g. (77, 768) for SD1.5; what the UNet attends to.
    On SD3 / Flux what the transformer reads, in tokens()'s order (lab.tour_flow.flow_embed)."""
    if _on_dit(pipe, flow_options):
        from .tour_flow import flow_embed
        return flow_embed(pipe, prompt, **flow_options)
    device = pipe.text_encoder.device
    cond, _ = pipe.encode_prompt(prompt, device, 1, False)  # (1, tokens, width)
    return cond[0].float().cpu()


def similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """Token-to-token cosine similarity: (tokens, width) -> (tokens, tokens)."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (tokens, width)
    return unit @ unit.T


def text_figure(rows: list[Token], sim: torch.Tensor, padding_shown: int = 2, ax=None):
    """Heat map of `sim` over the start, word and end tokens (plus a few padding tokens); returns the Figure.

    CLIP's outputs all point roughly the same way, so the colours span the shown values, not -1..1.
    """
    idx = _shown(rows, padding_shown)
    n = len(idx)
    short = {"start": "<start>", "end": "<end>", "padding": "<pad>"}
    labels = [(r.text.replace("</w>", "").lstrip("\u2581") if r.role == "word" else short[r.role])
              + (f" ({r.encoder})" if r.encoder != rows[0].encoder else "") for r in (rows[i] for i in idx)]
    shown = sim[idx][:, idx].numpy()
    if ax is None:
        ax = Figure(figsize=(1.6 + 0.5 * n, 1.0 + 0.45 * n), layout="constrained").add_subplot()
    im = ax.imshow(shown, cmap="viridis", vmin=float(shown.min()), vmax=1)
    if n <= 16:
        middle = (float(shown.min()) + 1) / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] < middle else "black")
    ax.set_xticks(range(n), labels, rotation=60, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_title("text encoder output:\ncosine similarity between positions", fontsize=10)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    return ax.figure


# ---------------------------------------------------------------- 2. the denoising loop

@dataclass
class Trajectory:
    """One generation with every step kept. Step i turns latents[i] into latents[i + 1] at timestep timesteps[i]."""

    prompt: str
    seed: int
    guidance: float
    timesteps: torch.Tensor    # (steps,)
    alphas: torch.Tensor       # (steps,) alpha-bar at each timestep: the share of signal in the noisy latent
    latents: torch.Tensor      # (steps + 1, C, h, w): pure noise ... the final latent
    eps_uncond: torch.Tensor   # (steps, C, h, w) the UNet's prediction without the prompt (empty prompt)
    eps_cond: torch.Tensor     # (steps, C, h, w) the UNet's prediction with the prompt
    x0: torch.Tensor           # (steps, C, h, w) the clean latent predicted at each step (from the guided prediction)
    images: np.ndarray         # (steps, H, W, 3) uint8: x0 decoded by the VAE
    image: np.ndarray          # (H, W, 3) float in [0, 1]: the final image, as pipe(..., output_type="np") gives it
    prediction_type: str = "epsilon"   # or "flow" (SD3: the predictions are velocities, see lab.tour_flow)
    sigmas: torch.Tensor | None = None  # flow matching only: (steps + 1,) the noise level of each step, then 0

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def guided(self, step: int, guidance: float | None = None) -> torch.Tensor:
        """uncond + guidance * (cond - uncond) at `step`: (C, h, w). Any guidance, from the stored predictions."""
        g = self.guidance if guidance is None else guidance
        return self.eps_uncond[step] + g * (self.eps_cond[step] - self.eps_uncond[step])


@torch.no_grad()
def denoise(pipe, prompt: str, seed: int = 0, steps: int = 25, guidance: float = 7.5,
            negative_prompt: str | None = None, **flow_options) -> Trajectory:
    """Generate `prompt` with a readable copy of StableDiffusionPipeline's loop, keeping every step.

        run = denoise(pipe, "a red circle", seed=0, steps=25, guidance=7.5)
        run.image       # equals pipe("a red circle", num_inference_steps=25, guidance_scale=7.5,
                        #             generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]

    For a v-prediction model (SD 2.x at 768 px) the "noise" predictions are the UNet's v. Both branches (with and
    without the prompt) are always computed, so guidance can be changed afterwards at any
    step. The noise comes from a CPU generator (as diffusers does for a CPU generator on any device). The pipeline's
    own scheduler is not touched: the loop uses a fresh one from the same config.
    SD3 / SD3.5 pipelines get the flow-matching loop, lab.tour_flow.denoise_flow (``max_sequence_length``: T5's).
    """
    if _on_dit(pipe, flow_options):
        from .tour_flow import denoise_flow
        return denoise_flow(pipe, prompt, seed, steps, guidance, negative_prompt, **flow_options)
    if hasattr(pipe, "text_encoder_2"):
        raise ValueError(f"{type(pipe).__name__} needs extra conditioning (SDXL); the tour supports SD 1.x / 2.x")
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)

    # 1. Encode the prompt, and the empty (or negative) prompt for the unconditional branch
    cond, uncond = pipe.encode_prompt(prompt, device, 1, True, negative_prompt)  # each (1, tokens, width)
    text = torch.cat([uncond, cond])                                                # (2, tokens, width)

    # 2. Timesteps, from noisy to clean
    scheduler.set_timesteps(steps, device=device)

    # 3. Start from pure noise
    size = unet.config.sample_size                                                  # latent side, e.g. 64 for SD1.5
    shape = (1, unet.config.in_channels, size, size)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype).to(device)
    latents = latents * scheduler.init_noise_sigma                                  # (1, C, h, w)

    kept = {"latents": [latents[0].float().cpu()], "uncond": [], "cond": [], "x0": [], "alphas": []}
    for t in scheduler.timesteps:
        # 4. Predict the noise in both branches at once: batch [uncond, cond]
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)        # (2, C, h, w)
        eps = unet(model_in, t, encoder_hidden_states=text).sample                  # (2, C, h, w)
        eps_uncond, eps_cond = eps.chunk(2)                                         # each (1, C, h, w)

        # 5. Classifier-free guidance: push the prediction away from "no prompt", towards the prompt
        guided = eps_uncond + guidance * (eps_cond - eps_uncond)                    # (1, C, h, w)

        # 6. The clean latent this prediction implies (what the scheduler aims at), then one step towards it
        alpha = scheduler.alphas_cumprod[int(t)]
        x0 = predict_x0(model_in[:1].float(), guided.float(), alpha, scheduler.config.prediction_type)
        latents = scheduler.step(guided, t, latents).prev_sample                    # (1, C, h, w)

        for key, value in (("latents", latents), ("uncond", eps_uncond), ("cond", eps_cond), ("x0", x0)):
            kept[key].append(value[0].float().cpu())
        kept["alphas"].append(float(alpha))

    x0 = torch.stack(kept["x0"])                                                    # (steps, C, h, w)
    images = (decode(pipe, x0) * 255).round().astype(np.uint8)                      # (steps, H, W, 3)
    return Trajectory(prompt, seed, float(guidance), scheduler.timesteps.cpu(), torch.tensor(kept["alphas"]),
                      torch.stack(kept["latents"]), torch.stack(kept["uncond"]), torch.stack(kept["cond"]), x0,
                      images, decode(pipe, latents)[0], scheduler.config.prediction_type)


def tile(latent: torch.Tensor, channels: int = 4) -> np.ndarray:
    """(C, h, w) -> one 2-D array showing the first `channels` channels side by side in a 2 x 2 grid (NaN gaps)."""
    c = latent[:channels].float().numpy()
    c = np.concatenate([c, np.full((4 - len(c),) + c.shape[1:], np.nan)]) if len(c) < 4 else c
    gap_col = np.full((c.shape[1], 1), np.nan)
    rows = [np.concatenate([c[i], gap_col, c[i + 1]], axis=1) for i in (0, 2)]
    return np.concatenate([rows[0], np.full((1, rows[0].shape[1]), np.nan), rows[1]])


def _latent_panel(ax, latent: torch.Tensor, title: str, limit: float | None = None):
    lim = limit or float(latent.abs().max()) or 1.0
    ax.imshow(tile(latent), cmap=DIVERGING, vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _image_panel(ax, image, title: str):
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def step_figure(run: Trajectory, step: int, guidance: float | None = None, pipe=None) -> Figure:
    """Everything at one step: noisy latent, predictions (uncond, cond, guided, their difference) and x0-hat.

    Indexes the stored tensors. With a `guidance` other than the run's, the guided prediction and x0-hat at this
    step are recomputed from the stored cond/uncond predictions (decoded with `pipe`'s VAE if given; the UNet never
    runs). The later steps would change too; only a new denoise() shows that.
    """
    if not 0 <= step < run.steps:
        raise ValueError(f"step {step} is outside the run's steps 0..{run.steps - 1}")
    g = run.guidance if guidance is None else float(guidance)
    guided = run.guided(step, g)                                                    # (C, h, w)
    if g == run.guidance:
        x0_image, note = run.images[step], ""
    else:
        if run.prediction_type == "flow":  # SD3: x0 = x_t - sigma * v (lab.tour_flow)
            from .tour_flow import decode_flow as dec, flow_x0
            x0 = flow_x0(run.latents[step], guided, float(run.sigmas[step]))                  # (C, h, w)
        else:
            dec, x0 = decode, predict_x0(_scaled(run, step), guided, run.alphas[step], run.prediction_type)
        x0_image = dec(pipe, x0[None])[0] if pipe is not None else None
        note = f" (recomputed at guidance {g:g})"
    fig = Figure(figsize=(11, 5.6), layout="constrained")
    ax = fig.subplots(2, 4)
    t = int(run.timesteps[step])
    fig.suptitle(f"{run.prompt!r}: step {step + 1} of {run.steps}, timestep t = {t}, signal share "
                 f"alpha-bar = {float(run.alphas[step]):.3f}, guidance {g:g}", fontsize=11)
    lim = float(torch.stack([run.eps_uncond[step], run.eps_cond[step], guided]).abs().max())
    _latent_panel(ax[0, 0], run.latents[step], "noisy latent x_t\n(4 channels)")
    what = "velocity" if run.prediction_type == "flow" else "noise"
    _latent_panel(ax[0, 1], guided, f"predicted {what} (guided)" + ("\n" + note.strip() if note else "\n"), lim)
    if x0_image is not None:
        _image_panel(ax[0, 2], x0_image, "predicted clean image x0-hat\n(decoded by the VAE)" + note)
    else:
        _latent_panel(ax[0, 2], x0, "predicted clean latent x0-hat" + note)
    _image_panel(ax[0, 3], run.image, "final image\n(after the last step)")
    _latent_panel(ax[1, 0], run.eps_uncond[step], "unconditional prediction\n(empty prompt)", lim)
    _latent_panel(ax[1, 1], run.eps_cond[step], "conditional prediction\n(with the prompt)", lim)
    diff = run.eps_cond[step] - run.eps_uncond[step]
    _latent_panel(ax[1, 2], diff, "cond - uncond: what the prompt adds\n(guidance multiplies this)")
    a = ax[1, 3]
    norms = (run.eps_cond - run.eps_uncond).flatten(1).norm(dim=1).numpy()
    a.plot(range(1, run.steps + 1), norms, marker=".")
    a.axvline(step + 1, color="C3", lw=1)
    a.set_xlabel("step")
    a.set_ylabel("|cond - uncond|")
    a.set_title("how much the prompt matters\nat each step", fontsize=9)
    return fig


def _scaled(run: Trajectory, step: int) -> torch.Tensor:
    """The UNet's input at `step` as sqrt(alpha) x0 + sqrt(1 - alpha) eps (any scheduler's scaling undone).

    Rebuilt exactly from the stored x0-hat and guided prediction for epsilon models; for v-prediction models the
    stored latent is used, which is the same thing for DDIM (SD 2.x's scheduler).
    """
    if run.prediction_type != "epsilon":
        return run.latents[step]
    return run.alphas[step].sqrt() * run.x0[step] + (1 - run.alphas[step]).sqrt() * run.guided(step)


# ---------------------------------------------------------------- 3. two prompts, same noise

def divergence(a: Trajectory, b: Trajectory) -> torch.Tensor:
    """Per step, the L2 norm of the difference of the two runs' latents: (steps + 1,), 0 where they agree."""
    if a.latents.shape != b.latents.shape:
        raise ValueError(f"the runs differ in shape {tuple(a.latents.shape)} vs {tuple(b.latents.shape)}; "
                         "compare runs made with the same steps and model")
    return (a.latents - b.latents).flatten(1).norm(dim=1)


def compare_figure(a: Trajectory, b: Trajectory, step: int) -> Figure:
    """x0-hat of both prompts at `step`, where they differ (pixel difference), and when (divergence over steps)."""
    if not 0 <= step < a.steps:
        raise ValueError(f"step {step} is outside the runs' steps 0..{a.steps - 1}")
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.6])
    for axis, run, name in ((ax[0], a, "A"), (ax[1], b, "B")):
        _image_panel(axis, run.images[step], f"{name}: {textwrap.fill(run.prompt, 30)}\nx0-hat at step {step + 1}")
    where = np.abs(a.images[step].astype(np.float32) - b.images[step].astype(np.float32)).mean(-1) / 255
    im = ax[2].imshow(where, cmap="magma", vmin=0, vmax=max(float(where.max()), 1e-6))
    ax[2].set_title("where they differ\n|A - B| per pixel", fontsize=9)
    ax[2].set_xticks([])
    ax[2].set_yticks([])
    fig.colorbar(im, ax=ax[2], shrink=0.7)
    d = divergence(a, b).numpy()
    ax[3].plot(range(len(d)), d, marker=".", label="noisy latents")
    x0 = (a.x0 - b.x0).flatten(1).norm(dim=1).numpy()
    ax[3].plot(range(1, len(x0) + 1), x0, marker=".", label="predicted x0")
    ax[3].axvline(step + 1, color="C3", lw=1)
    ax[3].set_xlabel("step (0 = the shared starting noise)")
    ax[3].set_ylabel("L2 distance A - B")
    ax[3].set_title("when they diverge", fontsize=9)
    ax[3].legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- widgets (thin: each callback is a function above)

def _show(out, fig) -> None:
    from IPython.display import display
    out.clear_output(wait=True)
    with out:
        display(fig)


def text_explorer(pipe, prompt: str, **flow_options):
    """A prompt box; on Enter the token table and the similarity heat map are redrawn (the text encoder is cheap).
    SD3 / Flux: every window the transformer reads (``max_sequence_length``: T5's)."""
    import ipywidgets as W
    box, table, out = W.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=W.Layout(width="60%")), W.HTML(), W.Output()

    def redraw(change=None):
        rows = tokens(pipe, box.value, **flow_options)
        table.value = f"<pre>{html.escape(token_table(rows))}</pre>"  # '<|startoftext|>' is not a tag
        _show(out, text_figure(rows, similarity(embed(pipe, box.value, **flow_options))))

    box.observe(redraw, names="value")
    redraw()
    return W.VBox([box, W.HBox([table, out])]).add_class("lab-tour-text")


def step_explorer(pipe, run: Trajectory, **flow_options):
    """Step slider and guidance slider over a stored run; a button runs the model again for a new prompt/guidance
    (with the `flow_options` of denoise, on SD3: max_sequence_length)."""
    import ipywidgets as W
    state = {"run": run}
    step = W.IntSlider(value=1, min=1, max=run.steps, description="step", continuous_update=False)  # 1-based
    guidance = W.FloatSlider(value=run.guidance, min=1.0, max=15.0, step=0.5, description="guidance",
                             continuous_update=False)
    prompt = W.Text(value=run.prompt, description="prompt")
    button = W.Button(description="run the model again", tooltip="new prompt or guidance for the whole trajectory")
    out = W.Output()

    def redraw(change=None):
        _show(out, step_figure(state["run"], step.value - 1, guidance.value, pipe))

    def rerun(_):
        r = state["run"]
        button.description = "running..."
        state["run"] = denoise(pipe, prompt.value, r.seed, r.steps, guidance.value, **flow_options)
        button.description = "run the model again"
        redraw()

    step.observe(redraw, names="value")
    guidance.observe(redraw, names="value")
    button.on_click(rerun)
    redraw()
    return W.VBox([W.HBox([step, guidance]), W.HBox([prompt, button]), out]).add_class("lab-tour-steps")


def compare_explorer(a: Trajectory, b: Trajectory):
    """A step slider over two stored runs (compare_figure)."""
    import ipywidgets as W
    step = W.IntSlider(value=a.steps // 2 + 1, min=1, max=a.steps, description="step", continuous_update=False)
    out = W.Output()
    step.observe(lambda change: _show(out, compare_figure(a, b, step.value - 1)), names="value")
    _show(out, compare_figure(a, b, step.value - 1))
    return W.VBox([step, out]).add_class("lab-tour-compare")
