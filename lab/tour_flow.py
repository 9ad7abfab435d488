"""The tour's readable denoising loop for SD3 / SD3.5 (flow matching on a diffusion transformer).

    >>> import lab.tour as tour
    >>> run = tour.denoise(sd3_pipe, "a red circle", seed=0, steps=28, guidance=7.0)   # comes here for SD3
    >>> run.latents.shape, run.eps_cond.shape        # (steps + 1, 16, h, w), (steps, 16, h, w): velocities
    (torch.Size([29, 16, 128, 128]), torch.Size([28, 16, 128, 128]))

The same steps as lab.tour.denoise writes out for a UNet, with what changes on SD3: three text encoders give the
conditioning (CLIP-L and CLIP-G tokens then T5 tokens, and both CLIPs' pooled vectors), the transformer predicts a
velocity v = noise - x_0 instead of the noise, the noise level is sigma in [0, 1] with x_t = (1 - sigma) x_0 +
sigma * noise, and the step is Euler's x_next = x_t + (sigma_next - sigma) v. ``run.eps_uncond`` / ``eps_cond`` hold
the two branches' velocities, ``run.sigmas`` the noise levels, ``run.alphas`` the signal share a variance-preserving
process with the same SNR would have, (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2).

flow_tokens / flow_embed are lab.tour.tokens / embed for SD3 and FLUX.1 (the text the transformer reads, window by
window); the loop itself is SD3's (Flux packs its latents and has no unconditional branch: it is refused by name).
"""
from __future__ import annotations

import numpy as np
import torch


def _windows(pipe, max_sequence_length: int | None = None) -> list[tuple[str, object, int]]:
    """(encoder, tokenizer, positions) of each text window a DiT reads, in order: SD3 CLIP's 77 then T5's
    (max_sequence_length, 256 by default), Flux T5's alone (512)."""
    if hasattr(pipe, "text_encoder_3"):  # SD3 / SD3.5: both CLIPs share one tokenization, then T5
        return [("CLIP", pipe.tokenizer, pipe.tokenizer_max_length),
                ("T5", pipe.tokenizer_3, max_sequence_length or 256)]
    return [("T5", pipe.tokenizer_2, max_sequence_length or 512)]


def flow_tokens(pipe, prompt: str, max_sequence_length: int | None = None) -> list:
    """lab.tour.tokens for an SD3 / Flux pipeline: every text position the transformer reads, window by window
    (CLIP: start, words, end, padding; T5: words, end '</s>', padding '<pad>'), positions counted across windows."""
    from .tour import Token

    rows, offset = [], 0
    for encoder, tok, length in _windows(pipe, max_sequence_length):
        ids = tok(prompt, padding="max_length", max_length=length, truncation=True).input_ids  # (length,)
        start = 1 if encoder == "CLIP" else 0  # T5 has no start token
        end = ids.index(tok.eos_token_id, start) if tok.eos_token_id in ids[start:] else len(ids)
        for i, (text, id_) in enumerate(zip(tok.convert_ids_to_tokens(ids), ids)):
            role = "start" if i < start else "word" if i < end else "end" if i == end else "padding"
            rows.append(Token(offset + i, text, id_, role, encoder))
        offset += len(ids)
    return rows


@torch.no_grad()
def flow_embed(pipe, prompt: str, max_sequence_length: int | None = None) -> torch.Tensor:
    """lab.tour.embed for an SD3 / Flux pipeline: the text states the transformer reads, (tokens, width), in
    flow_tokens' order (SD3: both CLIPs' states side by side, zero-padded to T5's width, then T5's)."""
    device = pipe._execution_device
    length = _windows(pipe, max_sequence_length)[-1][2]
    if hasattr(pipe, "text_encoder_3"):
        cond = pipe.encode_prompt(prompt, prompt, prompt, device=device, do_classifier_free_guidance=False,
                                  max_sequence_length=length)[0]   # (1, 77 + T5 tokens, width)
    else:
        cond = pipe.encode_prompt(prompt, prompt, device=device, max_sequence_length=length)[0]  # (1, T5, width)
    return cond[0].float().cpu()


def flow_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The clean latent one velocity implies: x0 = x_t - sigma * v (flow matching; same shapes in and out)."""
    return x_t - torch.as_tensor(sigma, dtype=x_t.dtype) * v


@torch.no_grad()
def decode_flow(pipe, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Latents (N, C, h, w) -> images (N, H, W, 3) float in [0, 1], as SD3 decodes (scaling factor, then shift)."""
    vae, out = pipe.vae, []
    for chunk in latents.split(batch):
        x = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        out.append(pipe.image_processor.postprocess(vae.decode(x).sample, output_type="np"))  # (n, H, W, 3)
    return np.concatenate(out)


@torch.no_grad()
def denoise_flow(pipe, prompt: str, seed: int = 0, steps: int = 28, guidance: float = 7.0,
                 negative_prompt: str | None = None, max_sequence_length: int = 256):
    """Generate `prompt` with a readable copy of StableDiffusion3Pipeline's loop, keeping every step.

        run = denoise_flow(pipe, "a red circle", seed=0, steps=28, guidance=7.0)
        run.image       # equals pipe("a red circle", num_inference_steps=28, guidance_scale=7.0,
                        #             generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]

    Both branches are always computed (the pipeline skips the empty prompt's at guidance <= 1), so guidance can be
    changed afterwards; the pipeline's scheduler is not touched (a fresh one from its config).
    """
    from .tour import Trajectory

    if hasattr(pipe, "_unpack_latents") or not hasattr(pipe, "text_encoder_3"):
        raise ValueError(f"{type(pipe).__name__}: the tour's flow-matching loop is SD3 / SD3.5's "
                         f"(StableDiffusion3Pipeline); for FLUX.1 use analyses.schedules.follow")
    transformer, device = pipe.transformer, pipe._execution_device
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    if scheduler.config.get("use_dynamic_shifting"):
        raise ValueError("the scheduler sets use_dynamic_shifting=True, which SD3's configs do not; the tour's "
                         "loop follows the static shift (scheduler.config.shift)")

    # 1. Encode the prompt with CLIP-L, CLIP-G and T5, and the empty (or negative) prompt for the unconditional branch
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
        prompt, prompt, prompt, device=device, do_classifier_free_guidance=True, negative_prompt=negative_prompt,
        max_sequence_length=max_sequence_length)       # (1, 77 + T5 tokens, width) twice, (1, 2 x CLIP width) twice
    text = torch.cat([uncond, cond])                   # (2, tokens, width)
    pooled = torch.cat([pooled_uncond, pooled])        # (2, pooled width)

    # 2. Noise levels sigma from 1 (pure noise) towards 0, shifted towards the noisy end (SD3: shift 3)
    scheduler.set_timesteps(steps, device=device)      # timesteps = sigmas * 1000, sigmas end with 0

    # 3. Start from pure noise (sigma = 1: no scaling, unlike a DDPM sampler's init_noise_sigma)
    size = transformer.config.sample_size              # latent side, e.g. 128 for SD3 at 1024 px
    shape = (1, transformer.config.in_channels, size, size)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=text.dtype).to(device)

    kept = {"latents": [latents[0].float().cpu()], "uncond": [], "cond": [], "x0": []}
    for i, t in enumerate(scheduler.timesteps):
        # 4. Predict the velocity in both branches at once: batch [uncond, cond]
        model_in = torch.cat([latents] * 2)                                          # (2, C, h, w)
        v = transformer(hidden_states=model_in, timestep=t.expand(2), encoder_hidden_states=text,
                        pooled_projections=pooled, return_dict=False)[0]             # (2, C, h, w)
        v_uncond, v_cond = v.chunk(2)                                                # each (1, C, h, w)

        # 5. Classifier-free guidance, as for a UNet
        guided = v_uncond + guidance * (v_cond - v_uncond)                           # (1, C, h, w)

        # 6. The clean latent this velocity implies, then one Euler step: x + (sigma_next - sigma) v
        x0 = flow_x0(latents.float(), guided.float(), scheduler.sigmas[i])           # (1, C, h, w)
        latents = scheduler.step(guided, t, latents).prev_sample                     # (1, C, h, w)

        for key, value in (("latents", latents), ("uncond", v_uncond), ("cond", v_cond), ("x0", x0)):
            kept[key].append(value[0].float().cpu())

    x0 = torch.stack(kept["x0"])                                                     # (steps, C, h, w)
    images = (decode_flow(pipe, x0) * 255).round().astype(np.uint8)                 # (steps, H, W, 3)
    sigmas = scheduler.sigmas[:-1].double().cpu()                                    # (steps,)
    alphas = (1 - sigmas) ** 2 / ((1 - sigmas) ** 2 + sigmas ** 2)
    return Trajectory(prompt, seed, float(guidance), scheduler.timesteps.cpu(), alphas.float(),
                      torch.stack(kept["latents"]), torch.stack(kept["uncond"]), torch.stack(kept["cond"]), x0,
                      images, decode_flow(pipe, latents)[0], "flow", scheduler.sigmas.double().cpu())
