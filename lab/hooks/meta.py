"""The metadata a trace writes into its Cache: what ran (model, prompt, tokens, timesteps, sizes, layout, versions).

    meta = run_meta(tr, {"mid_block": [8, 8]})   # called by Trace when its with-block ends
"""
from __future__ import annotations

import importlib.metadata

import torch


def run_meta(tr, res: dict) -> dict:
    """The metadata of a finished Trace `tr`: prompt, timesteps, sizes, layout, versions; plain JSON data."""
    import diffusers

    k, pipe, unet = tr.keep, tr.pipe, tr.denoiser
    started = tr.step >= 0
    prompts, tokens, per_prompt = prompts_of(tr)
    meta = {
        "model": getattr(pipe, "name_or_path", None) or unet.config.get("_name_or_path") or None,
        "pipeline": type(pipe).__name__ if pipe is not None else None,
        "prompt": prompts, "tokens": tokens, "num_images_per_prompt": per_prompt, "seed": None,
        "guidance_scale": getattr(pipe, "_guidance_scale", None),
        "timesteps": tr.timesteps,
        "num_inference_steps": getattr(getattr(pipe, "scheduler", None), "num_inference_steps", None)
        or len(tr.timesteps),
        "image_size": [d * tr.vae_scale_factor for d in tr.latent] if started else None,
        "latent_size": list(tr.latent) if started else None,
        "vae_scale_factor": tr.vae_scale_factor if started else None,
        "layout": list(tr.layout()) if started else None,
        "branches": list(tr.kept_branches) if started else None,
        "steps": list(tr.steps_seen) if k.step_mode in ("all", "list") else None,
        "summed_steps": list(tr.steps_seen) if k.step_mode in ("sum", "mean") else None,
        "keep": {"steps": k.steps if isinstance(k.steps, str) else list(k.steps), "heads": k.heads,
                 "tokens": None if k.tokens is None else list(k.tokens), "branches": list(k.branches),
                 **({"before_edits": True} if k.before_edits else {})},
        "resolution": res,
        "kinds": {n: tr.kinds[n] for n in res},
        "heads": {n: tr.points[n].heads for n in res if tr.points[n].heads},
        "edited": sorted(tr.edits),
        "denoiser": type(unet).__name__,
        "text_tokens": tr.n_keys if started else None,
        "token_grid": list(tr.grid) if tr.grid is not None else None,
        "guidance_embedding": bool(unet.config.get("guidance_embeds", False)),
        "context": context_of(tr) if started and tr.family != "unet" else None,
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "lab_version": lab_version(),
    }
    meta.update(tr.user_meta)
    return meta


# Which text encoder's tokens a DiT's text keys hold, in order: SD3 the CLIP window (both CLIPs' states, concatenated
# along channels, share its 77 positions) then T5's; Flux only T5's (its CLIP gives the pooled vector alone).
CONTEXT = {"sd3": (("clip", "text_encoder", "tokenizer"), ("t5", "text_encoder_3", "tokenizer_3")),
           "flux": (("t5", "text_encoder_2", "tokenizer_2"),)}


def context_of(tr) -> list[dict]:
    """A DiT's text keys by encoder: [{"encoder": "clip" | "t5", "keys": [start, stop], "tokens": [[per prompt]]}].

    tokens are the tokenizer's tokens of each prompt up to its end token (padding left out), None when the encoder's
    input ids were not seen (prompt_embeds given)."""
    out, start = [], 0
    parts = CONTEXT[tr.family]
    for i, (encoder, attr, tok_attr) in enumerate(parts):
        ids, tok = tr.encoder_ids.get(attr), getattr(tr.pipe, tok_attr, None)
        if i == len(parts) - 1:
            length = tr.n_keys - start
        else:
            length = ids.shape[1] if ids is not None else getattr(tr.pipe, "tokenizer_max_length", 77)
        tokens = None
        if ids is not None and tok is not None:
            tokens = []
            for row in ids.tolist():
                end = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
                tokens.append(tok.convert_ids_to_tokens(row[:end]))
        out.append({"encoder": encoder, "keys": [start, start + length], "tokens": tokens})
        start += length
    return out


def prompts_of(tr):
    """Prompts and their tokens as the text encoder saw them, and images per prompt; None where unknown."""
    tok = getattr(tr.pipe, "tokenizer", None) or getattr(tr.pipe, "tokenizer_2", None)
    if tr.input_ids is None or tok is None or tr.step < 0:
        return None, None, None
    ids = tr.input_ids  # (prompts, tokens)
    eos = getattr(tok, "eos_token_id", None)
    tokens = []
    for row in ids.tolist():
        end = row.index(eos) + 1 if eos in row else len(row)
        tokens.append(tok.convert_ids_to_tokens(row[:end]))
    prompts = [p.strip() for p in tok.batch_decode(ids, skip_special_tokens=True)]
    per_prompt = tr.batch // len(prompts) if tr.batch % len(prompts) == 0 else None
    return prompts, tokens, per_prompt


def lab_version() -> str:
    try:
        return importlib.metadata.version("diffusion-lab")
    except importlib.metadata.PackageNotFoundError:
        import lab

        return getattr(lab, "__version__", "unknown")
