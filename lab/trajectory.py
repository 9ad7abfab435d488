"""Record the latent trajectory of ordinary pipeline calls, re-run a recorded generation with latent edits, and
the two formulas every trajectory analysis needs (x0-hat from a prediction, decoding latents).

    >>> import lab
    >>> from lab.trajectory import record, run_edited
    >>> pipe = lab.load("shapes")
    >>> traj = record(pipe, ["a small red circle on a black background"], seeds=[0, 1], num_inference_steps=4)
    >>> traj.latents.shape                       # (steps+1, batch, C, h, w): [0] is the initial noise z_T
    torch.Size([5, 2, 4, 16, 16])
    >>> again = run_edited(pipe, traj, [(2, lambda z: z), (3, lambda z: 2 * z)], index=0)   # one run per edit

record(pipe, prompts, seeds, num_inference_steps, latents=None, batch=8, product=True, unet=False, **call_kwargs)
run_edited(pipe, traj, edits, index=0, batch=8) -> Trajectory     re-run element `index`, edit (step, fn) per run
Trajectory                   plain data: latents, timesteps, prompts, seeds, images, call, meta, unet (UNetSteps)
predict_x0(noisy, model_output, alpha, prediction_type)          the clean latent one prediction implies
decode(pipe, latents, batch) -> (N, H, W, 3) float in [0, 1]     as the pipeline decodes its output

The readable, teaching copy of the denoising loop is lab.tour.denoise; this module records the pipeline's own loop,
so any scheduler and pipeline option works. Nothing about the pipeline is changed: the latents are read and (for
edits) replaced through diffusers' ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs=["latents"]``,
which every Stable Diffusion pipeline (1.x, 2.x, SDXL, SD3 / SD3.5) supports. The initial noise is drawn here
exactly as the pipeline draws it (diffusers' ``randn_tensor`` on one CPU generator per image, seeded with that
image's seed) and passed as ``latents=``, so a recorded call makes the same image as
``pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed))``. With ``unet=True`` a forward hook on the UNet
(removed afterwards, also on error) also keeps, per step, the input and output of the UNet call the step used.
On SD3 the latents are the transformer's (16 channels, flow matching: init_noise_sigma 1); FLUX.1, whose latents
are packed into tokens, is refused (analyses.schedules.follow keeps its steps unpacked).

Step convention: ``latents[i]`` is the latent that enters denoising step ``i`` (timestep ``timesteps[i]``);
``latents[0]`` is the initial noise times the scheduler's ``init_noise_sigma`` (z_T) and ``latents[steps]`` the
final latent z_0 that the VAE decodes (after dividing by ``vae.config.scaling_factor``). An edit at step ``s``
replaces ``latents[s]``: s = 0 edits the noise, s = steps edits only what the VAE decodes.

Memory: all steps are kept, 4 bytes x (steps+1) x batch x C x h x w on the CPU (SD at 512 px, 50 steps: 3.3 MB
per image); ``unet=True`` adds 2 x 2 x that for the UNet's input and output of both guidance branches. The
pipeline's own memory is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

Edit = tuple[int, Callable[[torch.Tensor], torch.Tensor]]  # (step, fn: latent (C, h, w) -> edited latent (C, h, w))

# Arguments record/run_edited own; a caller passing them would silently change what is recorded.
_OWNED = ("generator", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "num_images_per_prompt",
          "output_type", "prompt", "prompt_embeds", "return_dict", "callback", "callback_steps")


@dataclass
class UNetSteps:
    """Per denoising step, the UNet call the step's update used (the last one of the step), on the CPU in float32.

    With classifier-free guidance a call's batch is [uncond rows, cond rows] (2 x batch rows), else batch rows."""
    inputs: torch.Tensor      # (steps, rows, C, h, w) the UNet's sample argument (after scale_model_input)
    outputs: torch.Tensor     # (steps, rows, C, h, w) its prediction (noise, v or sample)
    timesteps: torch.Tensor   # (steps,) float64: the timestep argument of each call
    calls: int = 0            # UNet calls in all (more than steps for multi-call schedulers such as Heun)


@dataclass
class Trajectory:
    """One or more recorded generations. Batch element b used prompt ``prompts[b]`` and seed ``seeds[b]``."""
    latents: torch.Tensor     # (steps+1, batch, C, h, w) float32, CPU; [0] = z_T, [steps] = z_0
    timesteps: torch.Tensor   # (steps,) float64: the scheduler timestep of each step
    prompts: list[str]        # (batch,)
    seeds: list[int]          # (batch,)
    images: np.ndarray        # (batch, H, W, 3) uint8, the decoded final images
    call: dict = field(default_factory=dict)  # the pipeline arguments, to repeat the call (num_inference_steps, ...)
    meta: dict = field(default_factory=dict)  # pipeline, scheduler, model, init_noise_sigma, vae scaling factor
    unet: UNetSteps | None = None             # with record(..., unet=True): the UNet's input and output per step

    @property
    def steps(self) -> int:
        return self.latents.shape[0] - 1


def _embed_dtype(pipe) -> torch.dtype:
    """The dtype the pipeline draws its noise in (that of its prompt embeddings)."""
    for name in ("text_encoder_2", "text_encoder"):  # SDXL casts to text_encoder_2's dtype, SD to text_encoder's
        module = getattr(pipe, name, None)
        if module is not None:
            return module.dtype
    return _denoiser(pipe).dtype


def _denoiser(pipe):
    from .hooks.points import denoiser_of
    return denoiser_of(pipe)


def _check_pipe(pipe, unet: bool) -> None:
    """Refuse FLUX.1 (packed latents) and unet=True on a diffusion transformer, by the pipeline's name."""
    from .pipes import family_of
    fam = family_of(pipe)
    if fam == "flux":
        raise NotImplementedError(f"{type(pipe).__name__} (FLUX.1) hands its callback latents packed 2x2 into tokens; "
                                  "lab.trajectory records (C, h, w) latents of SD 1.x / 2.x / SDXL and SD3 / SD3.5 "
                                  "pipelines (analyses.schedules.follow keeps Flux's steps unpacked)")
    if unet and fam != "unet":
        raise ValueError(f"unet=True keeps a UNet's input and output per step; {type(pipe).__name__} runs a "
                         "transformer (record without unet=, or use analyses.schedules.follow for its predictions)")


def _noise(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """(batch, C, h, w) initial noise, drawn as pipe.prepare_latents draws it from one CPU generator per image."""
    from diffusers.utils.torch_utils import randn_tensor

    channels, scale = _denoiser(pipe).config.in_channels, pipe.vae_scale_factor
    shape = (len(seeds), channels, height // scale, width // scale)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    device = getattr(pipe, "_execution_device", pipe.device)
    return randn_tensor(shape, generator=gens if len(gens) > 1 else gens[0], device=device, dtype=_embed_dtype(pipe))


def check_step(step: int, steps: int) -> None:
    """Refuse a step outside 0..steps of a trajectory, saying what 0 and `steps` mean."""
    if not isinstance(step, (int, np.integer)) or not 0 <= step <= steps:
        raise ValueError(f"step {step!r} is outside 0..{steps} (0 = the initial noise, {steps} = the final latent, "
                         f"for a {steps}-step trajectory)")


def _generate(pipe, prompts: list[str], seeds: list[int], call: dict, start: torch.Tensor | None,
              edits: Sequence[Edit | None], unet: bool = False):
    """One pipeline call. start: (batch, C, h, w) z_T to use instead of fresh noise. Returns latents
    (steps+1, batch, C, h, w), timesteps, images (batch, H, W, 3) uint8, init_noise_sigma, and with `unet` the
    UNetSteps of the call (else None)."""
    noise = _noise(pipe, seeds, call["height"], call["width"])  # drawn also when unused: same generator state
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    for g in gens:  # advance each generator past the noise, as the pipeline would have (matters for eta > 0)
        torch.randn((1, *noise.shape[1:]), generator=g, dtype=noise.dtype)
    z_T = noise if start is None else start.to(noise.device, noise.dtype)  # (batch, C, h, w), before init_noise_sigma
    by_step: dict[int, list[tuple[int, Callable]]] = {}
    for b, edit in enumerate(edits):
        if edit is not None:
            by_step.setdefault(int(edit[0]), []).append((b, edit[1]))
    kept: list[torch.Tensor] = []
    times: list[float] = []
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []  # every UNet call: (sample, t, output)
    ends: list[int] = []  # len(calls) at the end of each step

    def apply(latents: torch.Tensor, step: int) -> torch.Tensor:
        if step not in by_step:
            return latents
        latents = latents.clone()
        for b, fn in by_step[step]:
            latents[b] = fn(latents[b]).to(latents.dtype)
        return latents

    def on_unet(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]                       # (rows, C, h, w)
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        out = output[0] if isinstance(output, tuple) else output.sample     # (rows, C, h, w)
        calls.append((sample.detach().float().cpu(), float(torch.as_tensor(t).flatten()[0]),
                      out.detach().float().cpu()))

    def on_step_end(_pipe, i, t, kwargs):
        ends.append(len(calls))
        latents = apply(kwargs["latents"], i + 1)  # (batch, C, h, w): the latent entering step i+1
        kept.append(latents.detach().to("cpu", torch.float32, copy=True))
        times.append(float(t))
        return {"latents": latents}

    if 0 in by_step:  # edit the noise itself: undo the scheduler's scaling, which the pipeline applies again
        sigma0 = _init_noise_sigma(pipe, call)
        z_T = apply(z_T * sigma0, 0) / sigma0
    handle = pipe.unet.register_forward_hook(on_unet, with_kwargs=True) if unet else None
    try:
        out = pipe(prompts, generator=gens if len(gens) > 1 else gens[0], latents=z_T, output_type="np",
                   callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"], **call)
    finally:
        if handle is not None:
            handle.remove()
    # the value this call used (it can depend on set_timesteps; flow matching has none: 1)
    sigma = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
    first = (z_T * sigma).detach().to("cpu", torch.float32)  # (batch, C, h, w) z_T, edited if an edit was at 0
    latents = torch.stack([first] + kept)  # (steps+1, batch, C, h, w)
    images = (np.asarray(out.images) * 255).round().astype(np.uint8)  # (batch, H, W, 3)
    steps = None
    if unet:
        used = [calls[end - 1] for end in ends]  # the last UNet call of each step is the one its update used
        steps = UNetSteps(torch.stack([c[0] for c in used]), torch.stack([c[2] for c in used]),
                          torch.tensor([c[1] for c in used], dtype=torch.float64), len(calls))
    return latents, times, images, sigma, steps


def _init_noise_sigma(pipe, call: dict) -> float:
    """init_noise_sigma for this call's number of steps (Euler-type schedulers set it in set_timesteps)."""
    import copy
    sched = copy.deepcopy(pipe.scheduler)  # the user's scheduler is left as it is
    sched.set_timesteps(call.get("num_inference_steps", 50))
    return float(getattr(sched, "init_noise_sigma", 1.0))


def _settle_call(pipe, num_inference_steps: int, call_kwargs: dict) -> dict:
    for name in _OWNED:
        if name in call_kwargs:
            raise ValueError(f"{name}= is set by the recorder (seeds give the generators, images come back as uint8 "
                             f"arrays, one image per prompt and seed); arguments it leaves to you: everything else of "
                             f"{type(pipe).__name__}.__call__, e.g. guidance_scale, negative_prompt, height, eta")
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}; use an integer >= 1")
    default = _denoiser(pipe).config.sample_size * pipe.vae_scale_factor
    return dict(call_kwargs, num_inference_steps=int(num_inference_steps),
                height=call_kwargs.get("height") or default, width=call_kwargs.get("width") or default)


def _meta(pipe, sigma: float) -> dict:
    return {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
            "model": str(getattr(pipe.config, "_name_or_path", "")), "init_noise_sigma": sigma,
            "vae_scaling_factor": float(pipe.vae.config.scaling_factor)}


def record(pipe, prompts: str | Sequence[str], seeds: int | Sequence[int] = 0, num_inference_steps: int = 25,
           latents: torch.Tensor | None = None, batch: int = 8, product: bool = True, unet: bool = False,
           **call_kwargs) -> Trajectory:
    """Generate every (prompt, seed) pair, prompt-major (element p * len(seeds) + s), keeping z_t at every step;
    with ``product=False``, prompt i with seed i instead (equal lengths).

    ``latents`` (optional): (batch, C, h, w) initial noise as diffusers takes it (before init_noise_sigma).
    ``batch``: images per pipeline call. ``unet=True`` also keeps the UNet's input and output per step
    (``traj.unet``; batch must hold every image then). ``call_kwargs`` go to the pipeline unchanged
    (guidance_scale, negative_prompt, timesteps, guidance_rescale, eta, ...).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not prompts or not seeds:
        raise ValueError(f"record needs at least one prompt and one seed; "
                         f"got {len(prompts)} prompts, {len(seeds)} seeds")
    _check_pipe(pipe, unet)
    call = _settle_call(pipe, num_inference_steps, call_kwargs)
    if not product and len(prompts) != len(seeds):
        raise ValueError(f"product=False pairs prompt i with seed i; got {len(prompts)} prompts and {len(seeds)} seeds")
    pairs = [(p, s) for p in prompts for s in seeds] if product else list(zip(prompts, seeds))
    if latents is not None and latents.shape[0] != len(pairs):
        raise ValueError(f"latents has {latents.shape[0]} initial noises for {len(pairs)} (prompt, seed) pairs")
    if unet and len(pairs) > batch:
        raise ValueError(f"unet=True keeps one UNetSteps per pipeline call; record at most batch={batch} images "
                         f"(got {len(pairs)}) or raise batch")
    return _run(pipe, [p for p, _ in pairs], [s for _, s in pairs], call, latents, [None] * len(pairs), batch, unet)


def run_edited(pipe, traj: Trajectory, edits: Sequence[Edit | None], index: int = 0, batch: int = 8) -> Trajectory:
    """Re-run generation ``index`` of ``traj`` once per edit, with the same prompt, noise and call arguments.

    An edit ``(step, fn)`` replaces the latent entering ``step`` (0..steps) by ``fn(latent)`` (both (C, h, w)) and
    denoising continues from there; ``None`` re-runs unedited. Returns one trajectory element per edit.
    """
    _check_pipe(pipe, False)
    if not 0 <= index < len(traj.prompts):
        raise ValueError(f"index {index} is outside 0..{len(traj.prompts) - 1} (the trajectory's batch)")
    for edit in edits:
        if edit is not None:
            check_step(edit[0], traj.steps)
    n = len(edits)
    sigma = traj.meta.get("init_noise_sigma", 1.0)
    start = (traj.latents[0, index] / sigma).expand(n, *traj.latents.shape[2:])  # (n, C, h, w)
    return _run(pipe, [traj.prompts[index]] * n, [traj.seeds[index]] * n, traj.call, start, list(edits), batch)


def _run(pipe, prompts, seeds, call, start, edits, batch, unet: bool = False) -> Trajectory:
    if batch < 1:
        raise ValueError(f"batch={batch}; use an integer >= 1")
    parts = []
    for i in range(0, len(prompts), batch):
        chunk = slice(i, i + batch)
        parts.append(_generate(pipe, prompts[chunk], seeds[chunk], call,
                               None if start is None else start[chunk], edits[chunk], unet))
    latents = torch.cat([p[0] for p in parts], dim=1)  # (steps+1, batch, C, h, w)
    return Trajectory(latents=latents, timesteps=torch.tensor(parts[0][1], dtype=torch.float64),
                      prompts=list(prompts), seeds=list(seeds), images=np.concatenate([p[2] for p in parts]),
                      call=dict(call), meta=_meta(pipe, parts[0][3]), unet=parts[0][4])


def predict_x0(noisy: torch.Tensor, model_output: torch.Tensor, alpha: torch.Tensor | float,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """The clean latent implied by one prediction: noisy = sqrt(alpha) x0 + sqrt(1 - alpha) eps, solved for x0.

        x0 = predict_x0(x_t, eps, scheduler.alphas_cumprod[t], scheduler.config.prediction_type)   # same shapes
    """
    a = torch.as_tensor(alpha, dtype=noisy.dtype)
    if prediction_type == "epsilon":
        return (noisy - (1 - a).sqrt() * model_output) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; supported: epsilon, v_prediction, "
                     f"sample")


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Latents (N, C, h, w) -> images (N, H, W, 3) float in [0, 1], the way the pipeline decodes its output."""
    vae = pipe.vae
    out = []
    for chunk in latents.split(batch):
        x = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor
        out.append(pipe.image_processor.postprocess(vae.decode(x).sample, output_type="np"))  # (n, H, W, 3)
    return np.concatenate(out)
