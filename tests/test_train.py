"""lab.world.train's UNet stage on a few real scenes: checkpoints resume, and --processes trains data-parallel."""
import json

import numpy as np
import torch

from lab.world import make_scene
from lab.world.train import main, tokenizer


def _tiny_run(tmp_path, n=16):
    """A run folder holding what the UNet stage reads: latents (random here) and the captions' token ids."""
    captions = [make_scene(i, "train").caption for i in range(n)]
    ids = tokenizer()(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    torch.save({"latents": latents, "ids": ids.int(), "scaling_factor": 0.35}, tmp_path / "latents.pt")
    return tmp_path


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_unet_stage_checkpoints_and_resumes(tmp_path):
    run = _tiny_run(tmp_path)
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "4", "--ema", "0.9"])
    first = torch.load(run / "unet-sd.ckpt")
    main(["unet", "--run", str(run), "--steps", "3", "--batch", "4", "--ema", "0.9"])
    second = torch.load(run / "unet-sd.ckpt")
    assert (first["step"], second["step"]) == (2, 3)
    name = "conv_in.weight"
    assert not torch.equal(first["unet"][name], second["unet"][name])  # the third step trained
    assert not torch.equal(second["unet"][name], second["ema_unet"][name])


def test_two_processes_train_together_and_stop_at_one_step(tmp_path):
    run = _tiny_run(tmp_path)
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "2", "--processes", "2", "--ema", "0.9"])
    ckpt = torch.load(run / "unet-sd.ckpt")
    assert ckpt["step"] == 2
    done = [row for row in _log(run) if row.get("done")]
    assert len(done) == 1 and done[0]["processes"] == 2 and done[0]["step"] == 2  # only process 0 writes
    assert np.isfinite(ckpt["unet"]["conv_in.weight"].numpy()).all()
