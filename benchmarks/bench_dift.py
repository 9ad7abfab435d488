"""What DIFT features cost: one image, an ensemble of noise draws, against a plain full UNet pass over the same batch.

    python benchmarks/bench_dift.py                          # the built-in model, ensemble 8, up_blocks.1
    python benchmarks/bench_dift.py --model sd21-tiny --size 768   # SD2.1 layout at 1/8 width (random weights)
    python benchmarks/bench_dift.py --model sdxl-full --device cuda --dtype fp16   # real SDXL UNet, 1024 px
    python benchmarks/bench_dift.py --model path/to/pipeline --device cuda --dtype fp16

Runs, interleaved --repeats times (the order rotates each repeat):
  full UNet            unet(noisy latents, t, text).sample on the ensemble batch (what DIFT's reference computes)
  until <block>        lab.hooks.run_until(unet, block, ...) on the same batch, for each up block
  featurize            analyses.dift.featurize(pipe, image): resize, VAE encode, text, noise, UNet until --block
and prints a markdown table: median seconds and the median of per-repeat ratios to the full UNet pass.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import load, sync, write_section  # noqa: E402  (benchmarks/models.py)

from analyses.dift.features import condition, encode, featurize, noise_schedule, prepare  # noqa: E402
from lab.hooks import run_until  # noqa: E402
from lab.world import Obj, Scene, render  # noqa: E402


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--block", default="up_blocks.1")
    ap.add_argument("--t", type=int, default=261)
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--size", type=int, default=None, help="input pixels (default: the model's native size)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--section", default=None, help="write the table into this markdown file under its own heading")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pipe = load(args.model, args.device, dtype)
    size = args.size or "native"
    image = render(Scene((Obj("arrow", "red", "large", 60, 56, 22.0, "left"),), "white"))  # (128, 128, 3)

    prep = prepare(pipe, image, size)
    z = encode(pipe, prep.pixels)  # (1, 4, h, w)
    e = args.ensemble
    cond = {k: (v.expand(e, *v.shape[1:]) if torch.is_tensor(v) else
                {kk: vv.expand(e, *vv.shape[1:]) for kk, vv in v.items()})
            for k, v in condition(pipe, [""], prep.input_sizes[0]).items()}
    ts = torch.full((e,), args.t, dtype=torch.long)
    zt = noise_schedule(pipe).add_noise(z.cpu().float().expand(e, -1, -1, -1), torch.randn(e, *z.shape[1:]), ts)
    zt, ts = zt.to(pipe.unet.device, pipe.unet.dtype), ts.to(pipe.unet.device)
    blocks = [f"up_blocks.{i}" for i in range(len(pipe.unet.up_blocks))]

    runs = {"full UNet": lambda: pipe.unet(zt, ts, **cond).sample}
    for b in blocks:
        runs[f"until {b}"] = lambda b=b: run_until(pipe.unet, b, zt, ts, **cond)
    runs[f"featurize ({args.block}, with VAE + text)"] = lambda: featurize(
        pipe, image, t=args.t, block=args.block, ensemble=e, size=size, batch_size=e)
    times = {k: [] for k in runs}
    names = list(runs)
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for r in range(args.repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                sync(args.device)
                t0 = time.perf_counter()
                runs[k]()
                sync(args.device)
                times[k].append(time.perf_counter() - t0)
    full = times["full UNet"]
    lines = [f"{args.model}, input {prep.input_sizes[0][0]}x{prep.input_sizes[0][1]} px (latents "
             f"{z.shape[2]}x{z.shape[3]}), ensemble {e} (UNet batch {e}), t={args.t}, {args.dtype}, "
             f"{args.device}, {args.threads} thread(s), {args.repeats} repeats, torch {torch.__version__}", "",
             "| computation | median ms | x full UNet |", "|---|---|---|"]
    for k in names:
        ratio = statistics.median(a / b for a, b in zip(times[k], full))
        lines.append(f"| {k} | {1000 * statistics.median(times[k]):.1f} | {ratio:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.section:
        where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        write_section(Path(args.section), f"{args.model}, {where}, {args.dtype}",
                      f"`python benchmarks/bench_dift.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
                      f"CUDA {torch.version.cuda}, {datetime.date.today()}\n\n{text}")
    return text


if __name__ == "__main__":
    main()
