"""lab.world.train's UNet stage on a few real scenes: checkpoints resume, and --processes trains data-parallel; the
VAE stage's edge-weighted reconstruction loss."""
import json

import numpy as np
import torch

from lab.world import make_scene
from lab.world import render
from lab.world.train import edge_map, main, reconstruction_loss, tokenizer


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


def test_edge_map_marks_the_outline_of_each_object_and_nothing_else():
    scene = make_scene(3, "test", n_objects=1)
    x = torch.tensor(render(scene)).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 128, 128)
    edges = edge_map(x)[0, 0].bool().numpy()
    from lab.world.scenes import draw_mask
    from scipy import ndimage
    mask = draw_mask(scene.objects[0])
    ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_erosion(mask, iterations=3)
    assert edges.sum() > 100 and not (edges & ~ring).any()  # every edge pixel lies within 3 px of the outline
    assert edge_map(torch.zeros(1, 3, 32, 32)).sum() == 0


def test_edge_weight_counts_an_error_on_an_outline_more_than_the_same_error_inside():
    x = -torch.ones(1, 3, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0  # a white square on black: its outline is the edge band
    on_edge, inside = x.clone(), x.clone()
    on_edge[:, :, 8, 16] -= 0.5
    inside[:, :, 16, 16] -= 0.5
    plain = reconstruction_loss(on_edge, x)
    assert torch.isclose(plain, torch.nn.functional.mse_loss(on_edge, x) + 0.5 * torch.nn.functional.l1_loss(on_edge, x))
    assert torch.isclose(plain, reconstruction_loss(inside, x))
    assert reconstruction_loss(on_edge, x, edge_weight=10) > 3 * reconstruction_loss(inside, x, edge_weight=10)
