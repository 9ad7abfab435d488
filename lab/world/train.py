"""Train the built-in model on the shapes world: an SD-style VAE, then a UNet and CLIP text encoder jointly.

    python -m lab.world.train vae  --run runs/shapes --minutes 2
    python -m lab.world.train unet --run runs/shapes --minutes 120            # Stable Diffusion's recipe
    python -m lab.world.train unet --run runs/shapes --minutes 120 --variant zsnr  # zero terminal SNR, v-prediction
    python -m lab.world.train export --run runs/shapes --out lab/models/shapes
    python -m lab.world.train clip --run runs/clip --minutes 120      # a small CLIP on world 2 (lab.world.clip)

Every stage stops after ``--minutes`` or ``--steps`` and checkpoints as it goes (``--checkpoint-every`` seconds);
running it again continues from the checkpoint, drawing what an uninterrupted run would have drawn (each
micro-batch is seeded by its place in the run). The ``vae`` and ``unet`` stages run on ``accelerate``: a GPU when
there is one (bf16 autocast), data-parallel over several processes (DDP: NCCL between GPUs, gloo between CPU
processes), each process taking its own ``--batch`` per micro-batch and ``--accumulate K`` micro-batches per optimiser
step (an effective batch of batch x processes x K). Whatever is read off a clock (stopping, the ``--lr-final``
cosine, checkpointing) is process 0's, broadcast to the others.

    python -m lab.world.train unet --run runs/cpu --batch 32 --processes 2        # 2 CPU processes, 1 core each
    accelerate launch --num_processes 8 -m lab.world.train unet --run runs/gpu --batch 64   # 8 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m lab.world.train unet --run runs/cpu  # 2 CPU processes too

(``accelerate launch --cpu --num_processes 2`` starts one process.) The UNet stage's loop is ``lab.world.loop.fit``,
which ``lab.world.train_dit`` (``shapes-dit``) shares; this module keeps its model-specific step. It checkpoints with
``Accelerator.save_state`` into ``<run>/unet-<variant>/`` (``lab.world.checkpoint``); a run checkpointed before
that, in ``<run>/unet-<variant>.ckpt``, resumes from the file, and ``export`` reads either. The ``vae`` stage keeps
its ``vae.ckpt``, which ``latents`` and ``export`` read.

World 2, as Stable Diffusion was made: a CLIP trained contrastively first, then the UNet on its frozen text tower.

    python -m lab.world.train clip --run runs/clip --minutes 120 --negatives
    python -m lab.world.train clip-export --run runs/clip --out runs/clip/export
    python -m lab.world.train vae --run runs/w2-vae --init lab/models/shapes --world 2 --train-encoder
    python -m lab.world.train latents --run runs/w2 --init runs/w2-vae --world 2 --scenes 30000
    python -m lab.world.train unet --run runs/w2 --text-encoder runs/clip/export/text_encoder
    python -m lab.world.train export --run runs/w2 --out lab/models/shapes     # float16 on disk

The ``vae`` stage also renders the training scenes and stores their latents, so the UNet stages only read tensors.
To go on from a shipped model instead, ``latents --init lab/models/shapes`` encodes scenes with its VAE and
``unet --init lab/models/shapes`` starts from its weights; ``lab/world/train_gpu_refine.sh`` is that recipe for one
GPU (``--lr-final`` anneals the learning rate, ``--ema-out`` keeps a fetchable copy of the weights);
``lab/world/train_gpu_w2.sh`` is world 2's, from ``scripts/gpu_pack_w2.py``'s payload (an encoder-only vae.ckpt
that keeps runs/w2's latent scale, the float16 EMA as ``--init``, ``--ema-out-half``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .loop import Clock, _accelerator, _advance, _agreed, _launch, _log, _progress, _sample_seed, fit
from .scenes import make_scene, masks, render

TOKENIZER = Path(__file__).resolve().parent.parent / "models" / "shapes" / "tokenizer"
VARIANTS = ("sd", "zsnr")
# the UNet checkpoint's state.json (lab.world.checkpoint), with what a file of the format before it may lack
UNET_FIELDS = dict(step=None, variant="sd", world=1, scaling_factor=None, text_encoder=None)


# ---------------------------------------------------------------------------------------------------- models
def vae_config(latent_channels: int = 4) -> dict:
    """128x128 images to 16x16 latents of `latent_channels` (4 as SD 1.x / 2.x / XL; SD3 and Flux moved to 16 for
    finer detail; world 2's round trips of small shapes are the question)."""
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=16, sample_size=128)


def latent_channels_of(state: dict) -> int:
    """The latent channels of a VAE state dict (its quant_conv maps the 2 x channels of mean and log-variance)."""
    return int(state["quant_conv.weight"].shape[0]) // 2


def unet_config(world: int = 1, channels: int = 4) -> dict:
    """World 1: cross-attention at 16x16 and 8x8 latents, 2 heads, on a jointly trained 64-wide text encoder.

    World 2: cross-attention at every resolution (16x16, 8x8, 4x4 and the middle block, as SD 1.x has at 64, 32 and
    16 and its middle), on the frozen CLIP text tower's 128-wide hidden states, heads of 16 channels at every
    resolution (as SD 2.x keeps 64). The widths are world 1's: 4.3M parameters (8.2 MiB in float16) beside the text
    tower's 13.6 MiB, and 0.68 s per step of 32 on one CPU core, against 1.0 s and 18 MiB at 1.5x the width, which
    would not fit 30 MiB with the text tower.
    """
    if world == 1:
        return dict(sample_size=16, in_channels=channels, out_channels=channels, layers_per_block=1,
                    block_out_channels=(32, 64, 128),
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=64, attention_head_dim=2, norm_num_groups=16)
    return dict(sample_size=16, in_channels=channels, out_channels=channels, layers_per_block=1,
                block_out_channels=(32, 64, 128),
                down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=128, attention_head_dim=(2, 4, 8), norm_num_groups=16)


def text_config() -> dict:
    return dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                projection_dim=64)


def scheduler_config(variant: str) -> dict:
    """Stable Diffusion's schedule; the zsnr variant rescales it to zero terminal SNR and predicts v."""
    base = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if variant == "sd":
        return base | dict(prediction_type="epsilon", timestep_spacing="leading")
    return base | dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)


@functools.cache
def tokenizer(folder: Path = TOKENIZER):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def token_ids(captions: list[str]) -> np.ndarray:
    """(N, 77) int32 CLIP token ids of the captions, padded and cut to 77 as the pipeline does."""
    ids = tokenizer()(captions, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------------- data
def _render_chunk(seeds: range, world: int = 1, near: bool = False):
    """(uint8 images (B, H, W, 3), captions) of training scenes; with `near`, also (B, H, W) bool: the pixels
    within 2 px of an object."""
    scenes = [make_scene(s, "train", world=world) for s in seeds]
    out = np.stack([render(s) for s in scenes]), [s.caption for s in scenes]
    if not near:
        return out
    from scipy.ndimage import binary_dilation
    return out + (np.stack([binary_dilation(masks(s).any(0), iterations=2) for s in scenes]),)


def make_dataset(n: int, workers: int, world: int = 1, near: bool = False):
    """(n, 3, 128, 128) uint8 images of training scenes (seeds 0..n-1) of `world` and their captions; with `near`,
    also (n, 1, 128, 128) bool masks of the pixels within 2 px of an object."""
    chunks = [(range(i, min(i + 2000, n)), world, near) for i in range(0, n, 2000)]
    with Pool(workers) as pool:
        parts = pool.starmap(_render_chunk, chunks)
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    out = images, [c for p in parts for c in p[1]]
    return out + (torch.from_numpy(np.concatenate([p[2] for p in parts]))[:, None],) if near else out


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------- helpers
def _save(obj, path: Path) -> None:
    """Write `obj` with every tensor on the CPU (a checkpoint loads anywhere), atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(_on_cpu(obj), tmp)
    os.replace(tmp, path)


def _on_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, _on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _save_folders(out: Path, dtype: torch.dtype | None = None, **models) -> None:
    """`save_pretrained` each model into out/<name> (its weights cast to `dtype`, if given, in a copy), replacing
    the old files only once the new ones are written."""
    import copy
    import shutil
    for name, model in models.items():
        tmp = out / f"{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        if dtype is not None:  # nn.Module's own to(): diffusers' warns of modules to keep in float32 (these have none)
            model = torch.nn.Module.to(copy.deepcopy(model), dtype)
        model.save_pretrained(str(tmp))
        (out / name).mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / name / f.name)
        tmp.rmdir()


def _device() -> torch.device:
    """The device of the stages without an Accelerator (latents, clip): CUDA when one is visible."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------------- stages
class _Autoencode(torch.nn.Module):
    """The VAE's training pass as one forward, so that DDP (which hooks forward) averages its gradients."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample(generator)).sample, posterior.kl()  # (B, 3, 128, 128), (B,)


def train_vae(run: Path, minutes: float, steps: int, n_scenes: int, batch: int, workers: int, every: float,
              lr: float = 2e-4, init: Path | None = None, world: int = 1, encoder: bool = False,
              object_weight: float = 1.0, accumulate: int = 1, latent_channels: int = 4) -> None:
    """Train the VAE on `world`'s scenes; with `init`, fine-tune that model's decoder (and its encoder too with
    `encoder`, which changes what its latents mean: world 2's backgrounds need it). With `object_weight` W, the
    reconstruction error of pixels within 2 px of an object counts W times: objects cover a few percent of an
    image, yet their shape and colour are what the parser (and every study) reads. Data-parallel over the
    Accelerator's processes, each drawing its own `batch` per micro-batch; the main process checkpoints.
    `latent_channels` for a new VAE (one from `init` or a checkpoint keeps its own)."""
    from diffusers import AutoencoderKL
    accelerator = _accelerator(accumulate)
    device, main = accelerator.device, accelerator.is_main_process
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    images, captions, *near = make_dataset(n_scenes, workers, world, near=object_weight != 1)  # the same on resuming
    if main:
        _log(run, stage="data", scenes=len(captions), world=world, object_weight=object_weight,
             seconds=round(time.time() - t0, 1))
    step, ckpt = 0, run / "vae.ckpt"
    state = torch.load(ckpt, map_location=device) if ckpt.exists() else None
    if state is not None:
        latent_channels = latent_channels_of(state["model"])
    vae = AutoencoderKL(**vae_config(latent_channels)).to(device)
    if init is not None:  # fine-tune the decoder of a shipped model; its encoder, and so its latents, stay as they are
        vae, _, _ = _load_vae(init)
        if getattr(vae, "encoder_only", False):
            raise SystemExit(f"{init}/vae.ckpt holds an encoder alone: the vae stage needs a whole VAE to go on from")
        vae = vae.to(device)
        if not encoder:
            vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if state is not None:
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        step = state["step"]
    model, opt = accelerator.prepare(_Autoencode(vae), opt)
    clock, gen = Clock(minutes, steps, every), torch.Generator()
    images_dev, rec = images.to(device), None
    weights = 1 + (object_weight - 1) * near[0].to(device).float() if near else None  # (N, 1, 128, 128)

    def save() -> None:
        if main:
            _save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)

    bar = _progress(clock, step, "vae", show=main)
    while True:
        stop, due = _agreed(accelerator, clock.done(step), clock.checkpoint_due())
        if stop:
            break
        if due:
            save()
        for micro in range(accumulate):
            gen.manual_seed(_sample_seed(step, micro, accelerator.process_index, accumulate))
            idx = torch.randint(0, len(images_dev), (batch,), generator=gen).to(device)
            x = to_unit(images_dev[idx])  # (B, 3, 128, 128)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    recon, kl = model(x, gen)
                err = (recon.float() - x).pow(2) + 0.5 * (recon.float() - x).abs()
                rec = err.mean()  # MSE + 0.5 L1, what the log shows whatever the weights
                kl = kl.mean() / x[0].numel()
                accelerator.backward((rec if weights is None else (err * weights[idx]).mean()) + 1e-4 * kl)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        step += 1
        _advance(bar, clock, step)
        if step % 100 == 0 and main:
            _log(run, stage="vae", step=step, rec=round(rec.item(), 5), kl=round(kl.item(), 4))
            _advance(bar, clock, step, step=step, rec=round(rec.item(), 5))
    bar.close()
    save()
    if main:
        _log(run, stage="vae", step=step, done=True, processes=accelerator.num_processes,
             **({} if rec is None else {"rec": round(rec.item(), 5)}))
    accelerator.wait_for_everyone()
    if main and (init is None or encoder):
        chunk, ids = (512 if device.type == "cuda" else 32), token_ids(captions)
        encode_latents(run, vae, ((images[i:i + chunk], ids[i:i + chunk]) for i in range(0, len(ids), chunk)), device,
                       world=world)
    accelerator.end_training()


@torch.no_grad()
def encode_latents(run: Path, vae, chunks, device: torch.device, scaling: float | None = None, world: int = 1) -> None:
    """Store every training scene's latent (posterior mean), the scaling factor (by default 1 / the latents' std),
    the caption token ids and the scenes' world. chunks yields (uint8 images (B, 3, H, W), token ids (B, 77)), a
    chunk at a time."""
    vae.eval()
    means, ids, t0 = [], [], time.time()
    for images, chunk_ids in chunks:
        x = to_unit(torch.as_tensor(images).to(device))
        means.append(vae.encode(x).latent_dist.mean.float().cpu())
        ids.append(torch.as_tensor(chunk_ids))
        if len(means) % 20 == 0:
            print(f"encoded {sum(len(m) for m in means)}", flush=True)
    latents = torch.cat(means)  # (N, 4, 16, 16)
    scaling = scaling or float(1.0 / latents.std())
    _save({"latents": (latents * scaling).half(), "ids": torch.cat(ids).int(), "scaling_factor": scaling,
           "world": world}, run / "latents.pt")
    _log(run, stage="latents", n=len(latents), scaling_factor=round(scaling, 5), seconds=round(time.time() - t0, 1))


def _latent_chunk(seeds: range, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A chunk of training scenes as (uint8 images (B, 3, H, W), caption token ids), tokenised in the worker."""
    images, captions = _render_chunk(seeds, world)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), token_ids(captions)


def make_latents(run: Path, init: Path, n_scenes: int, workers: int, world: int = 1) -> None:
    """Render `world`'s training scenes and encode them with the VAE of `init`: a pipeline folder (to continue its
    UNet) or a ``vae`` stage's run folder (its ``vae.ckpt``; the scaling factor is then 1 / the latents' std).

    Scenes stream from the workers to the encoder a chunk at a time, so only the latents are ever held: 400,000
    scenes take 0.8 GB rather than 20 GB of images. The VAE runs on the GPU when there is one.

    A vae.ckpt may hold the encoder alone (``encoder_only``, with the ``scaling_factor`` of the latents it made
    before, as ``scripts/gpu_pack_w2.py`` writes it): the latents then come out on that scale, so that a UNet trained
    on the old ones goes on with the new, and the run's vae.ckpt is that encoder again.
    """
    run.mkdir(parents=True, exist_ok=True)
    chunks = [range(i, min(i + 1000, n_scenes)) for i in range(0, n_scenes, 1000)]
    with Pool(workers) as pool:  # started before CUDA is, so the forked workers inherit none of it
        vae, steps, scaling = _load_vae(init)
        encode_latents(run, vae.to(_device()), pool.imap(functools.partial(_latent_chunk, world=world), chunks),
                       _device(), scaling=scaling, world=world)
    if Path(init).resolve() != run.resolve():
        state = vae.cpu().state_dict()
        if getattr(vae, "encoder_only", False):  # its decoder is no trained one: keep the encoder alone
            state = {k: v for k, v in state.items() if k.startswith(ENCODER)}
            _save({"model": state, "step": steps, "encoder_only": True, "scaling_factor": scaling}, run / "vae.ckpt")
        else:
            _save({"model": state, "step": steps}, run / "vae.ckpt")


ENCODER = ("encoder.", "quant_conv.")  # the VAE's weights that make latents


def _load_vae(init: Path):
    """(AutoencoderKL, its training steps, the latents' scaling factor) of a pipeline folder (its vae/ and config's
    factor) or of a vae stage's run (its vae.ckpt; factor None, i.e. 1 / the latents' std, unless the file names
    one). An ``encoder_only`` vae.ckpt leaves the decoder at its random start; the model is marked encoder_only."""
    from diffusers import AutoencoderKL
    if (Path(init) / "vae.ckpt").exists():
        state = torch.load(Path(init) / "vae.ckpt", map_location="cpu")
        vae = AutoencoderKL(**vae_config(latent_channels_of(state["model"])))
        if state.get("encoder_only"):
            missing, unexpected = vae.load_state_dict(state["model"], strict=False)
            lacking = [k for k in vae.state_dict() if k.startswith(ENCODER) and k not in state["model"]]
            if unexpected or lacking:
                raise ValueError(f"{Path(init) / 'vae.ckpt'} is marked encoder_only but lacks encoder weights "
                                 f"{lacking[:3]} or has others {unexpected[:3]}")
            vae.encoder_only = True
        else:
            vae.load_state_dict(state["model"])
        return vae, state["step"], state.get("scaling_factor")
    vae = AutoencoderKL.from_pretrained(str(init), subfolder="vae")
    return vae, 0, vae.config.scaling_factor


def train_unet(run: Path, variant: str, minutes: float, steps: int, batch: int, lr: float, every: float,
               init: Path | None = None, ema: float = 0.9995, lr_final: float | None = None,
               ema_out: Path | None = None, text_encoder: Path | None = None, accumulate: int = 1,
               ema_out_half: bool = False) -> None:
    """Train the UNet and text encoder; with `lr_final`, the learning rate falls from `lr` to it along a cosine
    over this run's minutes (or steps, whichever ends it first). With `ema_out`, every checkpoint also writes the
    EMA weights (what `export` ships) there as diffusers/transformers folders, small enough to fetch from a
    remote machine; with `ema_out_half`, in float16 and without a frozen text tower (it is `text_encoder`'s folder
    already): world 2's UNet alone, 8.6 MB, where float32 would be 17.2 MB.

    With `text_encoder` (a ``CLIPTextModel`` folder, such as ``clip-export``'s ``text_encoder/``), that encoder is
    frozen and only the UNet trains, as Stable Diffusion trained on frozen CLIP. World-2 latents (what ``latents
    --world 2`` stores) need one; the UNet then takes ``unet_config(2)``. A resumed run keeps its encoder.
    With `init` (a folder with ``unet/``: a shipped model, or another run's ``--ema-out``, float16 or not), a new
    run starts from those UNet weights with a fresh optimiser; a run with a checkpoint resumes from it instead.

    Data-parallel over the Accelerator's processes: each draws `batch` samples per micro-batch, `accumulate`
    micro-batches make one optimiser step (an effective batch of batch x processes x accumulate), and every process
    takes the same averaged steps. The checkpoint is ``lab.world.checkpoint``'s folder; a run checkpointed in the
    format before it (``unet-<variant>.ckpt``) resumes from that file, and its next checkpoint is the folder.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from . import checkpoint
    accelerator = _accelerator(accumulate)
    device, main = accelerator.device, accelerator.is_main_process
    data = torch.load(run / "latents.pt")
    latents, ids = data["latents"].to(device), data["ids"].long().to(device)  # (N, 4, 16, 16), (N, 77)
    scenes = data.get("world", 1)  # the shapes world the latents come from
    step, path = 0, run / f"unet-{variant}"
    found = checkpoint.find(path)
    old = checkpoint.legacy(found, device) if found is not None and checkpoint.is_legacy(found) else None
    kept = checkpoint.meta(found, UNET_FIELDS, old) if found is not None else {}
    if kept.get("text_encoder") and text_encoder and Path(text_encoder) != Path(kept["text_encoder"]):
        raise SystemExit(f"{found} was trained on the frozen text encoder {kept['text_encoder']}, not {text_encoder}")
    text_encoder = text_encoder or kept.get("text_encoder")
    if scenes == 2 and text_encoder is None:
        raise SystemExit(f"{run / 'latents.pt'} holds world-2 latents: pass --text-encoder, the frozen CLIP text "
                         "tower the UNet conditions on (clip-export writes it as <out>/text_encoder)")
    empty = torch.from_numpy(token_ids([""])).long().to(device)  # (1, 77)
    sched = DDPMScheduler(**{k: v for k, v in scheduler_config(variant).items() if k not in ("set_alpha_to_one",)})
    channels = latents.shape[1]  # the VAE's latent channels
    unet = UNet2DConditionModel(**unet_config(scenes, channels)).to(device)
    ema_unet = UNet2DConditionModel(**unet_config(scenes, channels)).to(device).requires_grad_(False)
    joint = text_encoder is None  # world 1: the text encoder trains jointly with the UNet, and has an EMA too
    if joint:
        text = CLIPTextModel(CLIPTextConfig(**text_config())).to(device)
        ema_text = CLIPTextModel(CLIPTextConfig(**text_config())).to(device).requires_grad_(False)
    else:
        text = CLIPTextModel.from_pretrained(str(text_encoder)).to(device).requires_grad_(False).eval()
        ema_text = None
    if init is not None:  # continue from a shipped model's weights, with a fresh optimiser
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(init), subfolder="unet").state_dict())
        if joint:
            text.load_state_dict(CLIPTextModel.from_pretrained(str(init), subfolder="text_encoder").state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    if joint:
        ema_text.load_state_dict(text.state_dict())
    params = list(unet.parameters()) + (list(text.parameters()) if joint else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=device.type == "cuda")
    if old is not None:  # the format before accelerate: read once, written back as the folder at the next save
        unet.load_state_dict(old["unet"]), opt.load_state_dict(old["opt"]), ema_unet.load_state_dict(old["ema_unet"])
        if joint:
            text.load_state_dict(old["text"]), ema_text.load_state_dict(old["ema_text"])
        step = old["step"]
        if main:
            _log(run, stage=f"unet-{variant}", step=step, resumed=found.name, converting_to=path.name)
    # the forward passes go through the prepared (DDP-wrapped) models; the EMA and the checkpoint read the originals
    unet_fwd, *rest = accelerator.prepare(unet, *([text] if joint else []), opt)
    text_fwd, opt = (rest[0], rest[1]) if joint else (text, rest[0])
    checkpoint.register(accelerator, {"unet": unet, "ema_unet": ema_unet} |
                        ({"text_encoder": text, "ema_text_encoder": ema_text} if joint else {}))
    if old is None and found is not None:
        step = checkpoint.load(accelerator, found)["step"]
    alphas = sched.alphas_cumprod.to(device)

    def loss(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(latents), (batch,), device=device, generator=gen)
        x0, tok = latents[idx].float(), ids[idx]  # (B, 4, 16, 16), (B, 77)
        drop = torch.rand(batch, device=device, generator=gen) < 0.1  # classifier-free guidance: 10% no caption
        tok = torch.where(drop[:, None], empty, tok)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=device, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if variant == "sd" else a.sqrt() * noise - (1 - a).sqrt() * x0
        with accelerator.autocast():
            with torch.set_grad_enabled(joint):
                cond = text_fwd(tok)[0]  # (B, 77, 64), or (B, 77, 128) from world 2's frozen CLIP
            pred = unet_fwd(xt, t, cond).sample  # (B, 4, 16, 16)
        return F.mse_loss(pred.float(), target)

    def save(step: int) -> None:
        checkpoint.save(accelerator, path, dict(step=step, variant=variant, world=scenes,
                                                scaling_factor=data["scaling_factor"],
                                                text_encoder=None if joint else str(text_encoder)))
        if ema_out is not None and main:
            texts = {"text_encoder": ema_text if joint else text} if joint or not ema_out_half else {}
            _save_folders(ema_out, torch.float16 if ema_out_half else None, unet=ema_unet, **texts)

    fit(accelerator, run, f"unet-{variant}", step, loss, opt, params, [unet_fwd, text_fwd] if joint else [unet_fwd],
        [(ema_unet, unet)] + ([(ema_text, text)] if joint else []), save, clock=Clock(minutes, steps, every), lr=lr,
        lr_final=lr_final, ema=ema, accumulate=accumulate, batch=batch)
    accelerator.end_training()


def _ema_models(found: Path):
    """(EMA UNet, text encoder: world 1's EMA or world 2's frozen one), float32 on the CPU, from either format."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from . import checkpoint
    if not checkpoint.is_legacy(found):
        text = found / "ema_text_encoder"
        if not text.exists():
            text = Path(checkpoint.meta(found, UNET_FIELDS)["text_encoder"])
        return UNet2DConditionModel.from_pretrained(str(found / "ema_unet")), CLIPTextModel.from_pretrained(str(text))
    s = checkpoint.legacy(found)
    unet = UNet2DConditionModel(**unet_config(s.get("world", 1)))
    unet.load_state_dict(s["ema_unet"])
    if "ema_text" in s:
        text = CLIPTextModel(CLIPTextConfig(**text_config()))
        text.load_state_dict(s["ema_text"])
    else:
        text = CLIPTextModel.from_pretrained(s["text_encoder"])
    return unet, text


def export(run: Path, variant: str, out: Path, card: dict | None = None, vae_run: Path | None = None) -> Path:
    """Write a diffusers StableDiffusionPipeline folder from the run's EMA weights (and its frozen text encoder, if
    it had one), from either checkpoint format. A world-2 model's weights are stored in float16 (its CLIP text
    tower alone is 12 MiB of token embeddings); a plain ``from_pretrained`` computes in float32, as for world 1.
    vae_run: a vae run whose decoder went on after the latents were made (its encoder must be the run's)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from . import checkpoint
    path = run / f"unet-{variant}"
    found = checkpoint.find(path)
    if found is None:
        raise SystemExit(f"no UNet checkpoint of variant {variant!r} in {run}: neither {path.name}/ nor "
                         f"{checkpoint.legacy_file(path).name}")
    kept = checkpoint.meta(found, UNET_FIELDS)
    world = kept["world"]
    unet, text = _ema_models(found)
    vae_state = torch.load(run / "vae.ckpt", map_location="cpu")
    vae = AutoencoderKL(**vae_config(latent_channels_of(vae_state["model"])), scaling_factor=kept["scaling_factor"])
    if vae_state.get("encoder_only") and vae_run is None:
        raise SystemExit(f"{run / 'vae.ckpt'} holds the VAE's encoder alone: pass --vae, a vae run with the same "
                         "encoder and its decoder (such as runs/w2-dec)")
    if vae_run is not None:  # a decoder that went on alone: it must read the latents of the encoder that made them
        made, vae_state = vae_state["model"], torch.load(Path(vae_run) / "vae.ckpt", map_location="cpu")
        encoder = [k for k in made if k.startswith(("encoder.", "quant_conv."))]
        if not all(torch.equal(made[k], vae_state["model"][k]) for k in encoder):
            raise SystemExit(f"{vae_run} has another encoder than the one that made {run}'s latents: its decoder "
                             "would read latents it was not trained on")
    vae.load_state_dict(vae_state["model"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(**scheduler_config(variant)), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if world == 2:
        pipe.to(torch.float16)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if world == 2:  # transformers loads a model in the dtype its config names: float32, as diffusers does the rest
        config = json.loads((out / "text_encoder" / "config.json").read_text())
        config |= {key: "float32" for key in ("dtype", "torch_dtype") if key in config}
        (out / "text_encoder" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = {"variant": variant, "world": world, "unet_steps": kept["step"], "vae_steps": vae_state["step"]}
    (out / "training.json").write_text(json.dumps(meta | (card or {}), indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["vae", "latents", "unet", "export", "clip", "clip-eval", "clip-export"])
    p.add_argument("--run", type=Path, default=Path("runs/shapes"))
    p.add_argument("--variant", choices=VARIANTS, default="sd")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--scenes", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 for the VAE, 5e-4 for the UNet")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--checkpoint-every", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--init", type=Path, default=None, help="start from this pipeline folder's weights")
    p.add_argument("--processes", type=int, default=1,
                   help="vae and unet stages on a CPU: data-parallel processes, one per core, each taking --batch "
                        "samples (on GPUs: accelerate launch --num_processes N -m lab.world.train ...)")
    p.add_argument("--accumulate", type=int, default=1,
                   help="vae and unet stages: micro-batches of --batch per optimiser step (gradient accumulation)")
    p.add_argument("--lr-final", type=float, default=None,
                   help="UNet stage: fall from --lr to this along a cosine over the run (default: constant --lr)")
    p.add_argument("--ema-out", type=Path, default=None,
                   help="UNet stage: also write the EMA weights as unet/ and text_encoder/ folders here at each "
                        "checkpoint")
    p.add_argument("--ema-out-half", action="store_true",
                   help="UNet stage with --ema-out: write the EMA weights in float16, and a frozen text tower not at "
                        "all (world 2's UNet alone is 8.6 MB: small enough to come back from a lent GPU)")
    p.add_argument("--ema", type=float, default=0.9995,
                   help="EMA decay of the exported weights "
                        "(about 1/(1-decay) steps of memory; lower it for short runs)")
    p.add_argument("--width", type=int, default=128, help="clip stage: width of both towers (a new run only)")
    p.add_argument("--layers", type=int, default=4, help="clip stage: layers of each tower (a new run only)")
    p.add_argument("--pool", type=int, default=20_000, help="clip stage: training scenes held at once")
    p.add_argument("--refresh", type=int, default=8, help="clip stage: scenes of new seeds swapped in per step")
    p.add_argument("--eval-n", type=int, default=500, help="clip stages: unseen scenes the retrieval is scored on")
    p.add_argument("--negatives", action="store_true",
                   help="clip stage: score each image against its caption with one shape or colour swapped too")
    p.add_argument("--world", type=int, choices=(1, 2), default=1,
                   help="vae and latents stages: the world their scenes come from (the unet stage reads it from "
                        "latents.pt)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="unet stage: train on this frozen CLIPTextModel folder (world 2 needs one), as SD on CLIP")
    p.add_argument("--vae", type=Path, default=None,
                   help="export: take the VAE from this vae run (a decoder fine-tuned on after the latents were made)")
    p.add_argument("--object-weight", type=float, default=1.0,
                   help="vae stage: weight of the reconstruction error near objects (within 2 px)")
    p.add_argument("--train-encoder", action="store_true",
                   help="vae stage with --init: fine-tune the encoder too (its latents change meaning)")
    p.add_argument("--latent-channels", type=int, default=4,
                   help="vae stage, a new VAE: channels of its 16x16 latents (4 as SD 1.x / 2.x; 16 as SD3 and Flux)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.stage.startswith("clip"):
        from . import clip
        if a.stage == "clip":
            clip.train_clip(a.run, a.minutes, a.steps, a.batch or 256, a.lr or 5e-4, a.checkpoint_every, a.pool,
                            a.refresh, a.width, a.layers, a.eval_n, a.negatives)
        elif a.stage == "clip-eval":
            _log(a.run, stage="clip-eval", step=torch.load(a.run / "clip.ckpt")["step"],
                 **clip.retrieval(clip.load(a.run), a.eval_n))
        else:
            clip.export(a.run, a.out or a.run / "export")
        return
    if a.stage == "vae":
        _launch(train_vae, a.processes, dict(run=a.run, minutes=a.minutes, steps=a.steps, n_scenes=a.scenes,
                                             batch=a.batch or 32, workers=a.workers, every=a.checkpoint_every,
                                             lr=a.lr or 2e-4, init=a.init, world=a.world, encoder=a.train_encoder,
                                             object_weight=a.object_weight, accumulate=a.accumulate,
                                             latent_channels=a.latent_channels))
    elif a.stage == "latents":
        make_latents(a.run, a.init, a.scenes, a.workers, a.world)
    elif a.stage == "unet":
        _launch(train_unet, a.processes, dict(run=a.run, variant=a.variant, minutes=a.minutes, steps=a.steps,
                                              batch=a.batch or 128, lr=a.lr or 5e-4, every=a.checkpoint_every,
                                              init=a.init, ema=a.ema, lr_final=a.lr_final, ema_out=a.ema_out,
                                              text_encoder=a.text_encoder, accumulate=a.accumulate,
                                              ema_out_half=a.ema_out_half))
    else:
        export(a.run, a.variant, a.out or Path(f"lab/models/{'shapes' if a.variant == 'sd' else 'shapes-zsnr'}"),
               vae_run=a.vae)


if __name__ == "__main__":
    main()
