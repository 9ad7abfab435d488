"""Pack what a lent GPU needs to train world 2's UNet (and DiT) into .dev/w2/ (ignored), for lab/world/train_gpu_w2.sh.

    .venv/bin/python scripts/gpu_pack.py                # .dev/site.tar.xz: diffusers, accelerate, ... for the device
    mv lab/models/shapes-zsnr /tmp/                     # its 31 MiB would not fit beside the payload (mv it back after)
    .venv/bin/python scripts/gpu_pack_w2.py             # .dev/w2/, then the size of all that travels, or a refusal

What it writes, read from --run (runs/w2) and --text-encoder (runs/clip/export/text_encoder), which it only reads:
    w2/text_encoder/     the frozen tower as a CLIPTextModelWithProjection with the CLIP's text projection (what the
                         DiT reads; the UNet's CLIPTextModel loads it too), float16 on disk, config dtype float32
    w2/vae.ckpt          the VAE's encoder alone (encoder.*, quant_conv.*), float32, with the scaling factor of the
                         run's latents: ``latents --init .dev/w2`` encodes new scenes exactly as runs/w2's were made
    w2/init/unet/        the UNet's EMA (<run>/unet-sd/ema_unet), float16: ``unet --init .dev/w2/init``
    w2/dit/transformer/  the DiT's EMA (<run>/dit/ema_transformer), float16, if the run has one
    w2/source.json       where each came from (steps, paths), and the tower's float16 rounding error
The tokenizer travels with the tree (lab/models/shapes/tokenizer, which lab.world.train.token_ids reads).

Float16 is exact enough because it is what ships: the export stores the tower in float16, and the DiT stage rounds
it to float16 at load; the UNet trained on the float32 tower so far, and the packing measures how far the
float16-rounded tower's hidden states move on world-2 captions (``tower_rounding`` in source.json).

The device tool sends the working tree (tracked and untracked files that git does not ignore, as they are on disk)
and the carried .dev, 64 MiB in all: this script adds them up and refuses, naming what to move out, if they would
not fit.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20
sys.path.insert(0, str(REPO))


def travelling_bytes(repo: Path = REPO) -> dict[str, int]:
    """{path: bytes} of the working tree the device tool sends: tracked and not-ignored untracked files on disk."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return {p: (repo / p).stat().st_size for p in dict.fromkeys(listed) if p and (repo / p).is_file()}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _half_folder(model, out: Path) -> None:
    """save_pretrained in float16, the config naming float32 (transformers loads a model in its config's dtype)."""
    model.half().save_pretrained(str(out), safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config |= {key: "float32" for key in ("dtype", "torch_dtype") if key in config}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


@torch.no_grad()
def pack_tower(source: Path, out: Path) -> dict:
    """The frozen tower with its CLIP's projection, float16 on disk; returns how far float16 moves its states."""
    from transformers import CLIPTextModel
    from lab.world import make_scene
    from lab.world.train import token_ids
    from lab.world.train_dit import text_encoder
    model = text_encoder(source)  # CLIPTextModelWithProjection, already rounded to float16 (as the DiT reads it)
    if model.projection_source == "identity":
        print(f"warning: no clip/ beside {source}: the DiT would read the tower unprojected", file=sys.stderr)
    _half_folder(model, out)
    back, full = CLIPTextModel.from_pretrained(str(out)).eval(), CLIPTextModel.from_pretrained(str(source)).eval()
    ids = torch.from_numpy(token_ids([make_scene(i, "train", world=2).caption for i in range(64)])).long()  # (64, 77)
    a, b = full(ids).last_hidden_state, back(ids).last_hidden_state  # (64, 77, 128): what the UNet reads
    if back.dtype != torch.float32:
        raise SystemExit(f"the packed tower loads as {back.dtype}, not float32")
    return {"max_abs": float((a - b).abs().max()), "rms": float((a - b).pow(2).mean().sqrt()),
            "states_rms": float(a.pow(2).mean().sqrt()), "captions": 64}


def pack_encoder(run: Path, out: Path, scaling: float) -> dict:
    """The encoder that made <run>/latents.pt, float32, as an encoder_only vae.ckpt with the latents' scale."""
    from lab.world.train import ENCODER
    state = torch.load(run / "vae.ckpt", map_location="cpu")
    encoder = {k: v for k, v in state["model"].items() if k.startswith(ENCODER)}
    torch.save({"model": encoder, "step": state["step"], "encoder_only": True, "scaling_factor": scaling}, out)
    return {"vae_steps": state["step"], "encoder_params": sum(v.numel() for v in encoder.values())}


def _ema(path: Path, name: str, cls):
    """(the EMA module, state.json) of the checkpoint folder `path`; read again if a save renames it under us."""
    from lab.world import checkpoint
    for _ in range(3):
        found = checkpoint.find(path)
        try:
            return cls.from_pretrained(str(found / name)), json.loads((found / "state.json").read_text())
        except OSError:
            time.sleep(5)
    raise SystemExit(f"could not read {path / name}: a training process keeps renaming it? try again")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=REPO / "runs" / "w2")
    p.add_argument("--text-encoder", type=Path, default=REPO / "runs" / "clip" / "export" / "text_encoder")
    p.add_argument("--out", type=Path, default=REPO / ".dev" / "w2")
    p.add_argument("--no-dit", action="store_true",
                   help="leave the DiT's EMA out (10.3 MiB): the device then trains a new DiT, if DIT_SECONDS asks")
    a = p.parse_args(argv)
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    from lab.world import checkpoint
    found = checkpoint.find(a.run / "unet-sd")
    if found is None or checkpoint.is_legacy(found):
        raise SystemExit(f"no UNet checkpoint folder in {a.run}: expected {a.run / 'unet-sd'}/ (accelerate's)")
    tmp = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "init").mkdir(parents=True)
    unet, state = _ema(a.run / "unet-sd", "ema_unet", UNet2DConditionModel)
    if state.get("world") != 2:
        raise SystemExit(f"{found} is a world-{state.get('world')} UNet; this packs world 2's")
    _half_folder(unet, tmp / "init" / "unet")
    source = {"unet": {"from": str(found), "step": state["step"], "scaling_factor": state["scaling_factor"]},
              "text_encoder": {"from": str(a.text_encoder)}}
    source["tower_rounding"] = pack_tower(a.text_encoder, tmp / "text_encoder")
    source["vae"] = {"from": str(a.run / "vae.ckpt")} | pack_encoder(a.run, tmp / "vae.ckpt", state["scaling_factor"])
    dit = checkpoint.find(a.run / "dit")
    if dit is not None and not checkpoint.is_legacy(dit) and not a.no_dit:
        transformer, dit_state = _ema(a.run / "dit", "ema_transformer", SD3Transformer2DModel)
        (tmp / "dit").mkdir()
        _half_folder(transformer, tmp / "dit" / "transformer")
        source["dit"] = {"from": str(dit), "step": dit_state["step"]}
    (tmp / "source.json").write_text(json.dumps(source, indent=1) + "\n")
    shutil.rmtree(a.out, ignore_errors=True)
    tmp.replace(a.out)
    report(a.out)


def report(out: Path) -> None:
    """Print what travels and refuse (exit 1) when it would pass the device tool's 64 MiB."""
    tree = travelling_bytes()
    dev = REPO / ".dev"
    payload, carried = folder_bytes(out), folder_bytes(dev)
    total = sum(tree.values()) + carried
    mib = 2**20
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(REPO)}: {f.stat().st_size / mib:.2f} MiB")
    print(f"payload {out.relative_to(REPO)}: {payload / mib:.1f} MiB; carry .dev (site.tar.xz and the payload): "
          f"{carried / mib:.1f} MiB; working tree: {sum(tree.values()) / mib:.1f} MiB; "
          f"in all {total / mib:.1f} MiB of the device tool's 64")
    if not (dev / "site.tar.xz").exists():
        print("warning: no .dev/site.tar.xz: run scripts/gpu_pack.py too", file=sys.stderr)
    if total > LIMIT:
        models = {}
        for path, size in tree.items():
            if path.startswith("lab/models/"):
                models["/".join(path.split("/")[:3])] = models.get("/".join(path.split("/")[:3]), 0) + size
        spare = ", ".join(f"{m} ({s / mib:.1f} MiB)" for m, s in sorted(models.items()) if m != "lab/models/shapes")
        raise SystemExit(f"{total / mib:.1f} MiB would not travel ({(total - LIMIT) / mib:.1f} MiB over 64): move "
                         f"something the device does not need out of the working tree for the sitting and back after, "
                         f"e.g. `mv lab/models/shapes-zsnr /tmp/` (not lab/models/shapes: its tokenizer is needed); "
                         f"candidates: {spare}; or pack without the DiT (--no-dit)")


if __name__ == "__main__":
    main()
