"""The models the benchmarks run on, built or loaded one way for all of them.

    from models import load, native_size
    pipe = load("sdxl-full", "cuda", torch.float16)    # the real SDXL UNet config, random weights
    native_size("sdxl-full", pipe)                      # 1024
    pipe = load("flux-full", "cuda", torch.bfloat16)    # FLUX.1-dev's transformer, random weights, made on the GPU

Names: ``{sd15,sd21,sdxl}-tiny`` (tests/tiny_models.py: the real layouts at reduced width), ``{sd15,sd21,sdxl}-full``
(the real UNet configs at full width, random weights, real-width text encoders), ``sd3-full`` / ``flux-full`` (the
real SD3-medium / FLUX.1-dev transformer configs at full width, 2.0B / 11.9B parameters, random weights initialised
on `device` directly: seconds on a GPU, about 15 s / 90 s on one CPU thread; text encoders two layers deep at the
real widths, so the transformer's joint_attention_dim and pooled_projection_dim are the published ones),
``sd3-tiny`` / ``flux-tiny`` (the same layers and heads at head_dim 8, for CPU smoke runs), ``shapes`` /
``shapes-zsnr`` (the built-in models, through lab.load), or a diffusers pipeline folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

BUILT = {f"{arch}-{width}" for arch in ("sd15", "sd21", "sdxl") for width in ("tiny", "full")}
DITS = {"sd3": "sd3", "flux": "flux-dev"}  # benchmark name -> tests/tiny_models.py's REAL_DIT arch
BUILT_DIT = {f"{arch}-{width}" for arch in DITS for width in ("tiny", "full")}
# The tiny DiTs default to 256 px (a 16x16 token grid): at 1024 px one step of sd3-tiny takes ~20 s on a CPU thread
NATIVE = {"sd15-tiny": 512, "sd15-full": 512, "sd21-full": 768, "sdxl-full": 1024, "sd3-full": 1024,
          "flux-full": 1024, "sd3-tiny": 256, "flux-tiny": 256}


def load(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, width_divisor: int = 10):
    """A pipeline for `model` on `device` in `dtype`, with its progress bar off."""
    if model in BUILT_DIT:
        from tiny_models import tiny_dit_pipeline

        arch, width = model.split("-")
        pipe = tiny_dit_pipeline(DITS[arch], full_depth=True, full_width=width == "full", device=device, dtype=dtype)
    elif model in BUILT:
        from tiny_models import tiny_pipeline

        arch, width = model.split("-")
        pipe = tiny_pipeline(arch, "euler" if arch == "sdxl" else "ddim",
                             width_divisor=1 if width == "full" else width_divisor)
    else:
        import lab

        pipe = lab.load(model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def native_size(model: str, pipe) -> int:
    """The image size (pixels) `model` is used at: its real resolution, else the pipeline's default (SDXL, SD3,
    Flux) or the UNet's sample size."""
    if model in NATIVE:
        return NATIVE[model]
    return (getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size) * pipe.vae_scale_factor


def sync(device) -> None:
    """Wait for the device (a timing must not stop while kernels still run)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def write_section(path: Path, key: str, body: str) -> None:
    """Put `body` under the heading '## Measured: <key>' in `path`, replacing that section if it is there."""
    text = path.read_text() if path.exists() else ""
    heading = f"## Measured: {key}"
    parts = text.split("\n## ")
    kept = [p for i, p in enumerate(parts) if not (i and ("## " + p).startswith(heading))]
    text = "\n## ".join(kept).rstrip() + f"\n\n{heading}\n\n{body}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
