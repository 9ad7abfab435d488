"""`follow` on diffusion transformers (SD3 / SD3.5 / FLUX.1): every step of a flow-matching generation, kept as
`analyses.schedules.follow` keeps a UNet's (``follow`` sends a pipeline with a ``.transformer`` here).

    >>> from analyses.schedules import follow
    >>> run = follow(sd3_pipe, "a red square", seed=0, num_inference_steps=28)   # or a FluxPipeline
    >>> run.latents.shape, run.x0.shape, run.meta["sigmas"].shape   # (steps+1, C, h, w), (steps, C, h, w), (steps+1,)

Flow matching: x_t = (1 - sigma) x_0 + sigma * noise, the transformer predicts the velocity v = noise - x_0, and
the Euler step is x_next = x_t + (sigma_next - sigma) v; so x0-hat = x_t - sigma * v (at the last step, where
sigma_next = 0, x0-hat is the final latent). v is the guided prediction exactly as the pipeline combined it: SD3's
classifier-free guidance uncond + g (cond - uncond) over its [uncond, cond] batch, Flux's true CFG
neg + true_cfg_scale (pos - neg) over its two calls, or the one call of FLUX.1-dev / schnell. Flux's packed 2 x 2
tokens (1, h/2 * w/2, 4C) are unpacked to (C, h, w) with the pipeline's own ``_unpack_latents``. ``run.alphas`` is
the signal share a variance-preserving process with the same SNR would have, (1 - sigma)^2 / ((1 - sigma)^2 +
sigma^2), so the UNet runs' plots read the same.

The call is an ordinary ``pipe(...)`` with a forward hook on the transformer (removed afterwards, also on error) and
``callback_on_step_end``: the image is the pipeline's own.
"""
from __future__ import annotations

import numpy as np
import torch

from .maths import band_power


def is_flow_pipeline(pipe) -> bool:
    """True for SD3 / SD3.5 / Flux pipelines (a ``.transformer`` sampled with a flow-matching scheduler)."""
    return getattr(pipe, "transformer", None) is not None and "FlowMatch" in type(pipe.scheduler).__name__


def unpack(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, h, w) SD3 latents as they are; Flux's packed (B, tokens, 4C) -> (B, C, h, w) by its _unpack_latents."""
    if hasattr(pipe, "_unpack_latents") and latents.ndim == 3:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return latents


@torch.no_grad()
def decode_flow(pipe, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
    """(N, C, h, w) unpacked latents -> (N, H, W, 3) uint8, as SD3 / Flux decode (scaling factor and shift)."""
    vae, out = pipe.vae, []
    for chunk in latents.split(batch):
        x = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        out.append(pipe.image_processor.postprocess(vae.decode(x).sample, output_type="np"))  # (n, H, W, 3)
    return (np.concatenate(out) * 255).round().astype(np.uint8)


_OWNED = ("generator", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "num_images_per_prompt",
          "output_type", "prompt", "prompt_embeds", "return_dict", "latents", "skip_guidance_layers")


@torch.no_grad()
def follow_flow(pipe, prompt: str, seed: int = 0, num_inference_steps: int = 25, bands: int = 3,
                decode: bool = True, **call_kwargs):
    """`follow` for SD3 / Flux: the Run of ``pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), ...)``.

        run = follow_flow(pipe, "a red square", seed=0, num_inference_steps=4, height=256, width=256)
    """
    from .trajectory import Run, _unit

    for name in _OWNED:
        if name in call_kwargs:
            raise ValueError(f"{name}= is set by follow (one image from a CPU generator seeded `seed`; skip-layer "
                             f"guidance is not followed); pass the rest of {type(pipe).__name__}.__call__, e.g. "
                             f"guidance_scale, negative_prompt, height, width, max_sequence_length")
    default = pipe.default_sample_size * pipe.vae_scale_factor
    height, width = call_kwargs.pop("height", None) or default, call_kwargs.pop("width", None) or default
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # every transformer call: (hidden_states, prediction)
    ends: list[int] = []  # len(calls) at the end of each step
    kept: list[torch.Tensor] = []  # the latent after each step, as the pipeline holds it

    def on_call(module, args, kwargs, output):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out = output[0] if isinstance(output, tuple) else output.sample
        calls.append((x.detach().float().cpu(), out.detach().float().cpu()))

    def on_step_end(_pipe, i, t, kwargs):
        ends.append(len(calls))
        kept.append(kwargs["latents"].detach().float().cpu())
        return {}

    handle = pipe.transformer.register_forward_hook(on_call, with_kwargs=True)
    try:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        out = pipe(prompt, generator=gen, num_inference_steps=num_inference_steps, height=height,
                   width=width, output_type="np", callback_on_step_end=on_step_end,
                   callback_on_step_end_tensor_inputs=["latents"], **call_kwargs)
    finally:
        handle.remove()
    sigmas = pipe.scheduler.sigmas.double().cpu()  # (steps + 1,) this call's, ending at 0
    true_cfg = float(call_kwargs.get("true_cfg_scale", 1.0))
    g = float(getattr(pipe, "_guidance_scale", 1.0) or 1.0)
    xs, x0s, starts = [], [], [0] + ends[:-1]
    for i, (start, end) in enumerate(zip(starts, ends)):
        x, v = calls[start]  # (rows, ...) the step's input latents and the transformer's prediction
        if x.shape[0] == 2:  # SD3 classifier-free guidance: the batch is [uncond, cond]
            v = v[:1] + g * (v[1:] - v[:1])
        elif end - start == 2:  # Flux true CFG: the prompt's call, then the negative prompt's
            neg = calls[start + 1][1]
            v = neg + true_cfg * (v - neg)
        x = x[:1]
        x0 = x - sigmas[i].float() * v  # (1, ...) in the pipeline's layout, as the scheduler's float32 step
        xs.append(unpack(pipe, x, height, width)[0]), x0s.append(unpack(pipe, x0, height, width)[0])
    x0 = torch.stack(x0s)  # (steps, C, h, w)
    latents = torch.stack(xs + [unpack(pipe, kept[-1], height, width)[0]])  # (steps + 1, C, h, w)
    image = (np.asarray(out.images[0]) * 255).round().astype(np.uint8)  # (H, W, 3)
    x0_images = decode_flow(pipe, x0)
    xt_images = decode_flow(pipe, latents) if decode else np.zeros((len(latents), *image.shape), np.uint8)
    final, x0_unit = _unit(image[None]), _unit(x0_images)  # (1, 3, H, W), (steps, 3, H, W)
    error = band_power(x0_unit - final, bands) / band_power(final, bands).clamp_min(1e-12)
    s = sigmas[:-1]  # (steps,)
    return Run(prompt=prompt, seed=seed, timesteps=pipe.scheduler.timesteps.double().cpu(),
               alphas=(1 - s) ** 2 / ((1 - s) ** 2 + s ** 2), latents=latents, x0=x0, x0_images=x0_images,
               xt_images=xt_images, image=image, bands=band_power(x0_unit, bands), band_error=error,
               step_size=(latents[1:] - latents[:-1]).pow(2).mean(dim=(1, 2, 3)).sqrt(),
               meta={"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
                     "guidance_scale": g, "true_cfg_scale": true_cfg, "prediction_type": "flow (velocity)",
                     "sigmas": sigmas, "transformer_calls": len(calls), "height": height, "width": width})
