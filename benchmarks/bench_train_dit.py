"""Seconds per training step of shapes-dit's candidate transformers (benchmarks/train_dit.md).

    python benchmarks/bench_train_dit.py runs/clip/export/text_encoder          # the candidates of train_dit.md
    python benchmarks/bench_train_dit.py TOWER 160,5,6,2 --full                   # width,heads,layers,patch; 333 rows

One thread, batch 32, a whole step (the frozen tower's conditioning, forward, backward, AdamW); CPU seconds of this
process (time.process_time), so a busy machine slows the wall clock but not the figure; median of 4 after a warm-up.
"""
import argparse
import statistics
import time

import torch
from diffusers import SD3Transformer2DModel

from lab.world import train_dit as td

CANDIDATES = ["160,5,6,2", "128,4,8,2", "128,4,6,2", "128,4,4,1", "128,4,6,1"]


def seconds_per_step(text, null, width, heads, layers, patch, full: bool, batch: int = 32) -> tuple[float, int]:
    joint = text.config.hidden_size + td.NULL_WIDTH
    model = SD3Transformer2DModel(**td.transformer_config(joint, width, heads, layers, patch))
    if not full:
        td.use_pad_keys(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 49406, (batch, 77))
    x, t = torch.randn(batch, 4, 16, 16), torch.rand(batch) * 1000
    times = []
    for _ in range(5):
        t0 = time.process_time()
        context, pooled = td.conditioning(text, null, ids, joint, pad_rows=td.PAD_ROWS if full else 1)
        loss = model(x, context, pooled, t).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - t0)
    return statistics.median(times[1:]), sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("text_encoder")
    p.add_argument("sizes", nargs="*", default=CANDIDATES)
    p.add_argument("--full", action="store_true", help="the pipeline's 333 text rows, diffusers' processor")
    a = p.parse_args()
    torch.set_num_threads(1)
    text, null = td.text_encoder(a.text_encoder), td.null_encoder()
    print("| text rows | patch | width (heads x dim) | blocks | parameters | MiB fp16 | s / step |")
    print("|---|---|---|---|---|---|---|")
    for size in a.sizes:
        width, heads, layers, patch = map(int, size.split(","))
        sec, n = seconds_per_step(text, null, width, heads, layers, patch, a.full)
        rows = "333, diffusers' processor" if a.full else "78, PadKeys"
        print(f"| {rows} | {patch} | {width} ({heads} x {width // heads}) | {layers} | {n / 1e6:.2f}M | "
              f"{n * 2 / 2**20:.1f} | {sec:.2f} |", flush=True)


if __name__ == "__main__":
    main()
