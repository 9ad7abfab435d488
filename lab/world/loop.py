"""The training loop the UNet stage (``lab.world.train``) and the DiT stage (``lab.world.train_dit``) share.

    accelerator = _accelerator(accumulate)          # DDP, bf16 autocast on a GPU, float32 on a CPU
    step = fit(accelerator, run, "dit", step, loss, opt, params, [model_fwd], [(ema_model, model)], save,
               clock=Clock(minutes, steps, every), lr=3e-4, lr_final=None, ema=0.9995, accumulate=1, batch=32)
    _launch(stage, processes, kwargs)               # stage(**kwargs) here, or in N spawned CPU processes

``fit`` is the skeleton: the stop flag, the learning rate (500 warm-up steps, then constant or a cosine to
``lr_final``) and a checkpoint falling due, all read off process 0's clock and agreed by every process
(``_agreed``); ``accumulate`` micro-batches per optimiser step, each drawing from a generator seeded by its place in
the run (``_sample_seed``), so a resumed run draws what an uninterrupted one would have; gradient clipping at 1; the
EMA after each step; the log every 500 steps and the progress bar. What a stage trains is its ``loss(generator)``:
one micro-batch's draws, forward pass and loss. The stage builds its models, optimiser and checkpoint
(``lab.world.checkpoint``) around it.

Also here: ``Clock`` (stopping and checkpoint times), ``_log`` (run/log.jsonl), ``_progress`` / ``_advance`` (the
bar), ``_ema_update``, ``learning_rate``.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

WARMUP = 500  # steps of linear warm-up of the learning rate


class Clock:
    def __init__(self, minutes: float, steps: int, every: float):
        self.start, self.limit, self.steps, self.every, self.last = time.time(), minutes * 60, steps, every, time.time()

    def done(self, step: int) -> bool:
        return step >= self.steps or time.time() - self.start > self.limit

    def checkpoint_due(self) -> bool:
        if time.time() - self.last > self.every:
            self.last = time.time()
            return True
        return False


def _log(run: Path, **row) -> None:
    row["time"] = round(time.time(), 1)
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _progress(clock: Clock, first_step: int, desc: str, show: bool = True):
    """A progress bar over the stage's budget in percent (whichever of --minutes and --steps ends it first), with
    the elapsed time and the estimated time left; _advance moves it."""
    from ..progress import progress
    bar = progress(total=100, desc=desc, leave=True, disable=not show,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
    bar.first_step = first_step
    return bar


def _advance(bar, clock: Clock, at: int, **postfix) -> None:
    """Move the bar to step `at` of the clock's budget; postfix: what to show beside it (step=..., loss=...)."""
    done = max((time.time() - clock.start) / clock.limit if clock.limit > 0 else 0.0,
               (at - bar.first_step) / max(1, clock.steps - bar.first_step))
    n = min(100, int(100 * done))
    if n > bar.n:
        bar.update(n - bar.n)
    if postfix:
        bar.set_postfix(postfix, refresh=False)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():  # one fused call rather than a kernel per parameter (which dominated small GPU steps)
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def _accelerator(accumulate: int = 1):
    """This process's ``accelerate.Accelerator``: DDP over the processes of ``accelerate launch`` or ``--processes``
    (NCCL between GPUs, gloo between CPU processes), bf16 autocast on a GPU and float32 on a CPU, gradients summed
    over `accumulate` micro-batches per optimiser step."""
    from accelerate import Accelerator
    cuda = torch.cuda.is_available()
    # cpu=True on a machine without a GPU: accelerate otherwise treats each launched CPU process as alone
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no", gradient_accumulation_steps=accumulate)


def _agreed(accelerator, *values) -> tuple:
    """`values` as the main process has them. Whatever is read off a clock (the stop flag, the cosine's learning
    rate, a checkpoint falling due) goes through here, so that every process stops at the same step, takes it at
    the same learning rate and checkpoints together (their clocks differ slightly)."""
    if accelerator.num_processes == 1:
        return values
    from accelerate.utils import broadcast_object_list
    return tuple(broadcast_object_list(list(values), from_process=0))


def _sample_seed(step: int, micro: int, process: int, accumulate: int) -> int:
    """The seed of one micro-batch's draws (scenes, caption dropout, noise, timesteps): a function of where it is in
    the run, so a resumed run draws what an uninterrupted one would have."""
    return 1000 + process + 4096 * (step * accumulate + micro)


def _process(rank: int, world: int, port: int, stage, kwargs: dict) -> None:
    """One of ``--processes`` data-parallel CPU workers: one thread, pinned to core `rank` where the OS allows; the
    environment is what ``accelerate launch`` (torchrun) would give it, so `stage`'s Accelerator joins the others."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity") and rank < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {rank})
    stage(**kwargs)


def _launch(stage, processes: int, kwargs: dict) -> None:
    """Run `stage(**kwargs)` here, or in `processes` spawned CPU processes (``--processes``)."""
    if processes <= 1:
        return stage(**kwargs)
    if torch.cuda.is_available():
        raise SystemExit("--processes is for CPU cores; on GPUs use accelerate launch --num_processes N")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(f"--processes {processes} inside a launch of {os.environ['WORLD_SIZE']} processes: "
                         "use one or the other")
    import socket
    with socket.socket() as sock:  # a free port for the processes to meet on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_process, args=(processes, port, stage, kwargs), nprocs=processes)


def learning_rate(step: int, first_step: int, clock: Clock, lr: float, lr_final: float | None) -> float:
    """`lr` after WARMUP steps of linear warm-up (counted over the whole run); with `lr_final`, falling from there
    to it along a cosine over this sitting's minutes or steps, whichever ends it first."""
    warm = lr * min(1.0, (step + 1) / WARMUP)
    if lr_final is None:
        return warm
    done = max((time.time() - clock.start) / clock.limit, (step - first_step) / max(1, clock.steps - first_step))
    # math, not numpy: a numpy float in the optimiser's state would stop torch.load (weights only) resuming it
    return lr_final + (warm - lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def fit(accelerator, run: Path, stage: str, step: int, loss: Callable[[torch.Generator], torch.Tensor], opt,
        params: list, models: list, emas: list[tuple[torch.nn.Module, torch.nn.Module]],
        save: Callable[[int], None], *, clock: Clock, lr: float, lr_final: float | None, ema: float,
        accumulate: int, batch: int) -> int:
    """Train from `step` until the clock says stop, then save; returns the last step. Every process calls it.

    loss(generator): one micro-batch's loss (a scalar tensor), every random draw taken from `generator`, its
    forward passes through the prepared `models` (those ``accelerator.accumulate`` keeps from syncing gradients
    before the last micro-batch). `opt` is the prepared optimiser, `params` what its gradients are clipped over,
    `emas` the (EMA, trained module) pairs to update after each step, unwrapped; save(step) checkpoints (every
    process calls it). The EMA's decay warms up as (1 + step) / (10 + step) to `ema`.
    """
    main, first_step = accelerator.is_main_process, step
    gen = torch.Generator(accelerator.device)
    losses, t0 = [], time.time()
    bar = _progress(clock, step, stage, show=main)
    while True:
        stop, rate, due = _agreed(accelerator, clock.done(step), learning_rate(step, first_step, clock, lr, lr_final),
                                  clock.checkpoint_due())
        if stop:
            break
        if due:
            save(step)
        for g in opt.param_groups:
            g["lr"] = rate
        total = torch.zeros((), device=accelerator.device)
        for micro in range(accumulate):
            gen.manual_seed(_sample_seed(step, micro, accelerator.process_index, accumulate))
            with accelerator.accumulate(*models):
                value = loss(gen)
                accelerator.backward(value)  # divided by `accumulate`; all-reduced (DDP) on the last micro-batch
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                opt.step()  # only on the last micro-batch (accelerate's optimiser wrapper)
                opt.zero_grad(set_to_none=True)
            total += value.detach()
        step += 1
        for ema_model, model in emas:
            _ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))
        if step % 50 == 0:
            losses.append(total.item() / accumulate)
        _advance(bar, clock, step)
        if step % 500 == 0 and main:
            mean = round(float(np.mean(losses)), 5)
            _log(run, stage=stage, step=step, loss=mean, processes=accelerator.num_processes,
                 lr=float(f"{rate:.3g}"), sec_per_step=round((time.time() - t0) / (step - first_step), 3))
            _advance(bar, clock, step, step=step, loss=mean)
            losses = []
    bar.close()
    save(step)
    if main:
        _log(run, stage=stage, step=step, done=True, minutes=round((time.time() - clock.start) / 60, 2),
             processes=accelerator.num_processes, batch_per_process=batch, accumulate=accumulate)
    return step
