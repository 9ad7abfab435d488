"""Train ``shapes-dit``: an SD3-architecture MMDiT with flow matching, on world 2's latents and the frozen CLIP tower.

    python -m lab.world.train_dit dit --run runs/w2 --text-encoder runs/clip/export/text_encoder --minutes 120
    python -m lab.world.train_dit dit --run runs/w2 --processes 2 --batch 16                  # 2 CPU processes
    accelerate launch --num_processes 8 -m lab.world.train_dit dit --run runs/w2 --batch 64    # 8 GPUs
    python -m lab.world.train_dit export --run runs/w2 --out lab/models/shapes-dit      # float16 on disk

The run folder is a ``lab.world.train latents --world 2`` run (``latents.pt``, and ``vae.ckpt``, the VAE the latents
came from, which the export ships). ``dit`` trains on the UNet stage's machinery (``lab.world.loop.fit``): an
``accelerate.Accelerator`` (DDP over ``--processes`` CPU workers or ``accelerate launch``'s processes, bf16 autocast
on a GPU), ``--accumulate K`` micro-batches per step, each seeded by its place in the run. It stops after
``--minutes`` or ``--steps``, checkpoints every ``--checkpoint-every`` seconds into ``<run>/dit/``
(``lab.world.checkpoint``: ``transformer/`` and ``ema_transformer/`` as diffusers folders, AdamW's and the RNG
states, ``state.json``), and running it again continues exactly where it stopped, on the same text encoder. A run
checkpointed before that, in ``<run>/dit.ckpt``, resumes from the file (its next checkpoint is the folder), and
``export`` reads either.

API: ``transformer_config()``, ``scheduler_config()``, ``text_encoder(folder)``, ``null_encoder()``,
``conditioning(text, text_2, ids, joint_dim)`` (what the pipeline feeds, from token ids), ``PadKeys`` (the training
attention), ``pipeline(...)``, ``train_dit(run, ...)``, ``export(run, out)``.

The model, and why.
- Denoiser: diffusers' ``SD3Transformer2DModel`` on the 16x16x4 latents, patch 2 as SD3 (8x8 = 64 image tokens, 16
  pixels of the 128 px image per token, as SD3 has at 1024 px); 6 joint blocks (the last context-pre-only, as SD3),
  width 160 in 5 heads of 32. Patch 1 (256 tokens, 16x16 maps) costs 1.3x the time per step at 4 blocks of 128;
  width 192 would not fit 30 MiB beside the text tower. ``benchmarks/train_dit.md`` has the measurements.
- Text, as ``StableDiffusion3Pipeline.encode_prompt`` builds it. SD3 reads two CLIPs (each one's penultimate hidden
  states, concatenated on features, and each one's projected pooled output, concatenated) and T5 (its states
  follow the CLIP window; without a T5 the pipeline feeds ``max_sequence_length`` = 256 rows of zeros there).
  ``text_encoder`` is the frozen tower (a ``CLIPTextModelWithProjection``: the CLIP's own text projection, from the
  ``clip/`` folder ``clip-export`` writes beside ``text_encoder/``, else the identity). The same tower again as
  ``text_encoder_2`` would be 13.6 MiB more and the model would not fit 30 MiB, so ``text_encoder_2`` is a null CLIP
  (width 8, every weight zero, 0.8 MiB): its states and pooled output are exactly zero, as SD3's are for an encoder
  dropped in training (SD3 drops each of its three encoders independently, and runs without T5). ``text_encoder_3``
  is None. So the context is (77 + 256 tokens, 128 + 8 features): the tower's penultimate layer (not its
  last_hidden_state: that is what the pipeline reads) beside 8 zero features, then 256 zero rows.
- Training sees that context exactly, but cheaper: the 256 zero rows are identical, and so stay identical through
  every block, so one of them with its attention logit raised by log(256) (``PadKeys``) is the same attention as
  256 of them: 78 text tokens instead of 333, 3.5x faster on a CPU. A test holds the transformer's output with
  ``PadKeys`` on 78 tokens to its output with diffusers' processor on the pipeline's 333.
- The tower trains nothing and is used as shipped: its weights are rounded to float16 once at load, so the exported
  pipeline (float16 on disk) computes the very conditioning the transformer trained on.
- Flow matching as SD3: x_s = (1 - s) x0 + s noise, the transformer predicts noise - x0 at timestep 1000 s, s drawn
  logit-normal (mean 0, std 1: SD3's rf/lognorm(0.00, 1.00)), unweighted loss; 10% empty captions for guidance.
- Scheduler: ``FlowMatchEulerDiscreteScheduler`` with shift 1. SD3's shift 3 is for 4096 image tokens (1024 px);
  the SD3 paper's rule scales the shift by sqrt(tokens / 256) from its base resolution, where it is 1; at 64 tokens
  it would fall below 1 and push sampling steps toward low noise, where a 16x16 latent of flat shapes has little
  left to decide, so the base value is kept, for training and sampling alike.
- VAE: the run's world-2 VAE with its scaling factor (shift factor 0: the latents are only scaled).

Loading: ``lab.load(folder)``; plain diffusers needs the absent T5 named, as for any SD3 without it:
``StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)``. Calls with another
``max_sequence_length`` than 256 change the number of zero rows, and so the conditioning, from what it trained on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .loop import Clock, _accelerator, _launch, _log, fit
from .train import _save_folders, latent_channels_of, token_ids, tokenizer, vae_config

PAD_ROWS = 256  # StableDiffusion3Pipeline's default max_sequence_length: the T5 rows, zeros without a T5
NULL_WIDTH = 8  # text_encoder_2, the null CLIP


# ---------------------------------------------------------------------------------------------------- models
def transformer_config(joint_dim: int = 128 + NULL_WIDTH, width: int = 160, heads: int = 5, layers: int = 6,
                       patch: int = 2, channels: int = 4) -> dict:
    """SD3Transformer2DModel at small width; joint_dim: the context's features (tower + null tower); channels: the
    VAE's latent channels."""
    return dict(sample_size=16, patch_size=patch, in_channels=channels, out_channels=channels, num_layers=layers,
                attention_head_dim=width // heads, num_attention_heads=heads, joint_attention_dim=joint_dim,
                caption_projection_dim=width, pooled_projection_dim=joint_dim, pos_embed_max_size=32)


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, shift=1.0)


def text_encoder(folder: Path):
    """The frozen tower as a CLIPTextModelWithProjection, rounded to float16 (as shipped), in float32.

    A CLIPTextModel folder gets the CLIP's text projection from the ``clip/`` CLIPModel folder beside it when that
    holds the same text weights, else the identity (its pooled output unprojected)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    folder = Path(folder)
    config = CLIPTextConfig.from_pretrained(str(folder))
    if "CLIPTextModelWithProjection" in (config.architectures or []):
        model = CLIPTextModelWithProjection.from_pretrained(str(folder))
    else:
        tower = CLIPTextModel.from_pretrained(str(folder))
        tower = getattr(tower, "text_model", tower).state_dict()  # transformers 4 wraps the tower, 5 does not
        clip = folder.parent / "clip" / "model.safetensors"
        full = load_file(str(clip)) if clip.exists() else {}
        same = bool(full) and all(torch.equal(full.get(f"text_model.{k}", torch.empty(0)).float(), v.float())
                                  for k, v in tower.items())
        projection = (full["text_projection.weight"] if same
                      else torch.eye(config.hidden_size))  # (projection_dim, hidden)
        config.projection_dim = projection.shape[0]
        model = CLIPTextModelWithProjection(config)
        model.text_model.load_state_dict(tower)
        model.text_projection.load_state_dict({"weight": projection})
        model.projection_source = str(clip) if same else "identity"
    return model.half().float().requires_grad_(False).eval()


def null_encoder():
    """A CLIPTextModelWithProjection of width NULL_WIDTH whose every weight is zero: states and pooled output are 0."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=49408, hidden_size=NULL_WIDTH, intermediate_size=NULL_WIDTH,
                            num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=77,
                            projection_dim=NULL_WIDTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModelWithProjection(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.requires_grad_(False).eval()


@torch.no_grad()
def conditioning(text, text_2, ids: torch.Tensor, joint_dim: int, pad_rows: int = PAD_ROWS):
    """(context (B, 77 + pad_rows, joint_dim), pooled (B, joint_dim)) of (B, 77) token ids, as
    StableDiffusion3Pipeline.encode_prompt makes them without a T5 (tests/test_train_dit.py holds it to it)."""
    states, pooled = [], []
    for encoder in (text, text_2):
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])  # (B, 77, width): the penultimate layer, as the pipeline reads it
        pooled.append(out[0])  # (B, projection_dim): text_embeds
    clip = torch.cat(states, dim=-1)  # (B, 77, 128 + 8)
    clip = F.pad(clip, (0, joint_dim - clip.shape[-1]))
    pad = clip.new_zeros(clip.shape[0], pad_rows, joint_dim)  # (B, pad_rows, joint_dim): the absent T5's rows
    return torch.cat([clip, pad], dim=1), torch.cat(pooled, dim=-1)


class PadKeys:
    """Joint attention (JointAttnProcessor2_0's) with the last context token counted `copies` times.

    Fed 77 CLIP rows and one zero row, a transformer with this processor computes what diffusers' computes on the
    pipeline's 77 + `copies` rows (`copies` identical zero rows stay identical through every block, and `copies`
    equal keys are one key with `copies` times its weight: logit + log(copies))."""

    def __init__(self, copies: int = PAD_ROWS):
        self.copies = copies

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b, n, _ = hidden_states.shape  # (B, image tokens, width)
        heads = attn.heads

        def split(x):  # (B, tokens, width) -> (B, heads, tokens, head_dim)
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        cq = split(attn.add_q_proj(encoder_hidden_states))  # (B, heads, text tokens, head_dim)
        ck, cv = split(attn.add_k_proj(encoder_hidden_states)), split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)  # (B, heads, tokens, head_dim)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)  # (1 query row, keys): broadcast
        bias[0, -1] = math.log(self.copies)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, tokens, head_dim)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]).to(q.dtype)  # (B, tokens, width)
        image, context = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


def use_pad_keys(transformer, copies: int = PAD_ROWS) -> None:
    """Give every joint attention of `transformer` PadKeys; refuses processors PadKeys does not reproduce."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    procs = transformer.attn_processors
    bad = {name: type(p).__name__ for name, p in procs.items() if type(p) is not JointAttnProcessor2_0}
    if bad:
        raise ValueError(f"PadKeys reproduces JointAttnProcessor2_0 only; these layers have others: {bad}")
    transformer.set_attn_processor(PadKeys(copies))


def pipeline(transformer, text, text_2, vae):
    """A StableDiffusion3Pipeline of these parts, the CLIP tokenizer in both slots, no T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
        **scheduler_config()), vae=vae, text_encoder=text, tokenizer=tokenizer(), text_encoder_2=text_2,
        tokenizer_2=tokenizer(), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _vae(run: Path, scaling: float):
    from diffusers import AutoencoderKL
    state = torch.load(run / "vae.ckpt", map_location="cpu")["model"]
    vae = AutoencoderKL(**vae_config(latent_channels_of(state)), scaling_factor=scaling, shift_factor=0.0)
    vae.load_state_dict(state)
    return vae.eval()


def _hardware(accelerator) -> str:
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{n} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{n} process(es) x {torch.get_num_threads()} thread(s) of a {os.cpu_count()}-core CPU"


# ---------------------------------------------------------------------------------------------------- training
# the checkpoint's state.json (lab.world.checkpoint), with what a dit.ckpt of the format before it may lack
FIELDS = dict(step=None, text_encoder=None, world=1, scaling_factor=None, sessions=[])


def _transformer(found: Path | None, old: dict | None, joint_dim: int, init: Path | None = None, channels: int = 4):
    """A new SD3Transformer2DModel of the checkpoint's configuration (for a new run: `init`'s transformer/ config,
    else transformer_config for latents of `channels`)."""
    from diffusers import SD3Transformer2DModel
    if found is None and init is not None:
        return SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(str(Path(init) / "transformer")))
    if found is None:
        return SD3Transformer2DModel(**transformer_config(joint_dim, channels=channels))
    if old is not None:
        return SD3Transformer2DModel(**old["config"])
    return SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(str(found / "transformer")))


def train_dit(run: Path, text_encoder_dir: Path | None, minutes: float, steps: int, batch: int, lr: float,
              every: float, ema: float = 0.9995, lr_final: float | None = None, accumulate: int = 1,
              init: Path | None = None, ema_out: Path | None = None) -> None:
    """Train the transformer on run/latents.pt, on ``lab.world.loop.fit`` as the UNet stage: data-parallel over the
    Accelerator's processes, `accumulate` micro-batches of `batch` per step, 500 steps of warm-up and, with
    `lr_final`, a cosine to it over this sitting's minutes (or steps, whichever ends it first).

    The checkpoint is ``lab.world.checkpoint``'s folder <run>/dit/ (transformer/, ema_transformer/, state.json); a
    run checkpointed before it, in <run>/dit.ckpt, resumes from that file, and its next checkpoint is the folder.

    With `init` (a folder with ``transformer/``: an export, or another run's `ema_out`), a new run starts from those
    weights with a fresh optimiser; a run with a checkpoint resumes from it instead. With `ema_out`, every
    checkpoint also writes the EMA transformer there as ``transformer/``, in float16 (small enough to fetch from a
    remote machine).
    """
    from diffusers import SD3Transformer2DModel
    from . import checkpoint
    accelerator = _accelerator(accumulate)
    device, main = accelerator.device, accelerator.is_main_process
    data = torch.load(run / "latents.pt")
    latents, ids = data["latents"].to(device), data["ids"].long().to(device)  # (N, 4, 16, 16), (N, 77)
    step, path = 0, run / "dit"
    found = checkpoint.find(path)
    old = checkpoint.legacy(found, device) if found is not None and checkpoint.is_legacy(found) else None
    kept = checkpoint.meta(found, FIELDS, old) if found is not None else {}
    if kept and text_encoder_dir and Path(text_encoder_dir) != Path(kept["text_encoder"]):
        raise SystemExit(f"{found} was trained on the frozen text encoder {kept['text_encoder']}, "
                         f"not {text_encoder_dir}")
    text_encoder_dir = text_encoder_dir or kept.get("text_encoder")
    if text_encoder_dir is None:
        raise SystemExit("pass --text-encoder: the frozen CLIP text tower the transformer conditions on "
                         "(clip-export writes it as <out>/text_encoder)")
    text, text_2 = text_encoder(text_encoder_dir).to(device), null_encoder().to(device)
    init = init if found is None else None  # a checkpoint wins: it holds the optimiser too
    shape = (found, old, text.config.hidden_size + NULL_WIDTH, init, latents.shape[1])  # latents.shape[1]: channels
    model = _transformer(*shape).to(device)
    ema_model = _transformer(*shape).to(device).requires_grad_(False)
    if init is not None:  # load_state_dict casts a float16 folder to the model's float32
        model.load_state_dict(SD3Transformer2DModel.from_pretrained(str(init), subfolder="transformer").state_dict())
    ema_model.load_state_dict(model.state_dict())
    use_pad_keys(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2, fused=device.type == "cuda")
    if old is not None:  # the format before accelerate: read once, written back as the folder at the next save
        model.load_state_dict(old["model"]), opt.load_state_dict(old["opt"]), ema_model.load_state_dict(old["ema"])
        step = old["step"]
        if main:
            _log(run, stage="dit", step=step, resumed=found.name, converting_to=path.name)
    model_fwd, opt = accelerator.prepare(model, opt)  # the forward pass is DDP's; the EMA and checkpoint read model
    checkpoint.register(accelerator, {"transformer": model, "ema_transformer": ema_model})
    if old is None and found is not None:
        step = checkpoint.load(accelerator, found)["step"]
    sessions, first_step, clock = kept.get("sessions", []), step, Clock(minutes, steps, every)
    session = dict(steps=0, batch=batch, accumulate=accumulate, lr=lr, lr_final=lr_final, ema=ema,
                   scenes=len(latents), hardware=_hardware(accelerator), minutes=0.0)
    if found is not None:
        session["resumed"] = f"the {step}-step checkpoint"
    if init is not None:
        session["init"] = str(init)
    joint = model.config.joint_attention_dim
    empty = torch.from_numpy(token_ids([""])).long().to(device)  # (1, 77): the pipeline's negative prompt

    def loss(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(latents), (batch,), device=device, generator=gen)
        x0, tok = latents[idx].float(), ids[idx]  # (B, 4, 16, 16), (B, 77)
        drop = torch.rand(batch, device=device, generator=gen) < 0.1  # classifier-free guidance: 10% empty captions
        tok = torch.where(drop[:, None], empty, tok)
        context, pooled = conditioning(text, text_2, tok, joint, pad_rows=1)  # (B, 78, joint), (B, joint): float32
        noise = torch.randn(x0.shape, device=device, generator=gen)
        sigma = torch.sigmoid(torch.randn(batch, device=device, generator=gen))  # (B,) logit-normal(0, 1)
        xt = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        with accelerator.autocast():
            pred = model_fwd(xt, context, pooled, sigma * 1000).sample  # (B, 4, 16, 16)
        return F.mse_loss(pred.float(), noise - x0)  # flow matching: the velocity noise - x0

    def save(step: int) -> None:
        session.update(steps=step - first_step, minutes=round((time.time() - clock.start) / 60, 1))
        checkpoint.save(accelerator, path, dict(step=step, text_encoder=str(text_encoder_dir),
                                                world=data.get("world", 1), scaling_factor=data["scaling_factor"],
                                                sessions=sessions + [session]))
        if ema_out is not None and main:
            _save_folders(Path(ema_out), torch.float16, transformer=ema_model)

    fit(accelerator, run, "dit", step, loss, opt, list(model.parameters()), [model_fwd], [(ema_model, model)], save,
        clock=clock, lr=lr, lr_final=lr_final, ema=ema, accumulate=accumulate, batch=batch)
    accelerator.end_training()


# ---------------------------------------------------------------------------------------------------- export
def export(run: Path, out: Path) -> Path:
    """Write a StableDiffusion3Pipeline folder (float16) from the run's EMA weights, its frozen tower and its VAE,
    from either checkpoint format (<run>/dit/ or the older <run>/dit.ckpt)."""
    from diffusers import SD3Transformer2DModel
    from . import checkpoint
    found = checkpoint.find(run / "dit")
    if found is None:
        raise SystemExit(f"no DiT checkpoint in {run}: neither dit/ nor dit.ckpt")
    if checkpoint.is_legacy(found):
        s = checkpoint.legacy(found)
        transformer = SD3Transformer2DModel(**s["config"])
        transformer.load_state_dict(s["ema"])
    else:
        transformer = SD3Transformer2DModel.from_pretrained(str(found / "ema_transformer"))
    kept = checkpoint.meta(found, FIELDS)
    pipe = pipeline(transformer, text_encoder(kept["text_encoder"]), null_encoder(), _vae(run, kept["scaling_factor"]))
    pipe.to(torch.float16)
    out = Path(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    meta = {"variant": "sd3-flow-matching", "transformer_steps": kept["step"], "world": kept["world"],
            "text_encoder": kept["text_encoder"], "vae_steps": torch.load(run / "vae.ckpt")["step"],
            "transformer": kept["sessions"]}
    (out / "training.json").write_text(json.dumps(meta, indent=2))
    mib = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    _log(run, stage="dit-export", out=str(out), step=kept["step"], weights_mib=round(mib, 2))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["dit", "export"])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="dit: the frozen CLIPTextModel folder to condition on (a resumed run keeps its own)")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-final", type=float, default=None,
                   help="fall from --lr to this along a cosine over the sitting (default: constant --lr)")
    p.add_argument("--ema", type=float, default=0.9995, help="EMA decay of the exported weights")
    p.add_argument("--checkpoint-every", type=float, default=120.0)
    p.add_argument("--processes", type=int, default=1,
                   help="dit on a CPU: data-parallel processes, one per core, each taking --batch samples (on GPUs: "
                        "accelerate launch --num_processes N -m lab.world.train_dit dit ...)")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches of --batch per optimiser step")
    p.add_argument("--out", type=Path, default=Path("lab/models/shapes-dit"))
    p.add_argument("--init", type=Path, default=None,
                   help="dit, a new run: start from this folder's transformer/ weights (an export or an --ema-out)")
    p.add_argument("--ema-out", type=Path, default=None,
                   help="dit: also write the EMA transformer, float16, as <this>/transformer/ at each checkpoint")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.stage == "dit":
        _launch(train_dit, a.processes, dict(run=a.run, text_encoder_dir=a.text_encoder, minutes=a.minutes,
                                             steps=a.steps, batch=a.batch, lr=a.lr, every=a.checkpoint_every,
                                             ema=a.ema, lr_final=a.lr_final, accumulate=a.accumulate,
                                             init=a.init, ema_out=a.ema_out))
    else:
        export(a.run, a.out)


if __name__ == "__main__":
    main()
