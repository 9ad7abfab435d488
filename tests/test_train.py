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
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "2", "--processes", "2", "--ema", "0.9",
          "--lr-final", "1e-5"])  # the annealed rate is read off process 0's clock and shared
    ckpt = torch.load(run / "unet-sd.ckpt")
    assert ckpt["step"] == 2
    done = [row for row in _log(run) if row.get("done")]
    assert len(done) == 1 and done[0]["processes"] == 2 and done[0]["step"] == 2  # only process 0 writes
    assert np.isfinite(ckpt["unet"]["conv_in.weight"].numpy()).all()


def test_lr_final_falls_along_a_cosine_and_ema_out_writes_loadable_folders(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    (tmp_path / "run").mkdir()
    run, out = _tiny_run(tmp_path / "run"), tmp_path / "out"
    main(["unet", "--run", str(run), "--steps", "4", "--batch", "2", "--lr", "1e-3", "--lr-final", "1e-5",
          "--ema", "0.9", "--ema-out", str(out)])
    ckpt = torch.load(run / "unet-sd.ckpt")
    # the last step (index 3 of 4) took the cosine 3/4 of the way from the warmed-up lr (4/500 of 1e-3) to 1e-5
    warm, final = 1e-3 * 4 / 500, 1e-5
    expected = final + (warm - final) * 0.5 * (1 + np.cos(np.pi * 3 / 4))
    assert abs(ckpt["opt"]["param_groups"][0]["lr"] - expected) < 1e-12
    unet = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    text = CLIPTextModel.from_pretrained(str(out / "text_encoder"))
    for written, trained in ((unet.state_dict(), ckpt["ema_unet"]), (text.state_dict(), ckpt["ema_text"])):
        assert written.keys() == trained.keys()
        assert all(torch.equal(written[k], trained[k]) for k in written)
    assert sorted(p.name for p in out.iterdir()) == ["text_encoder", "unet"]  # no half-written folder left behind


def test_latents_stage_streams_scenes_into_the_shipped_vaes_latent_space(tmp_path):
    from diffusers import AutoencoderKL
    from lab.load import BUILTIN
    from lab.world import render
    from lab.world.train import to_unit
    main(["latents", "--run", str(tmp_path), "--init", str(BUILTIN["shapes"]), "--scenes", "3", "--workers", "1"])
    data = torch.load(tmp_path / "latents.pt")
    vae = AutoencoderKL.from_pretrained(str(BUILTIN["shapes"]), subfolder="vae")
    scene = make_scene(2, "train")
    with torch.no_grad():
        x = to_unit(torch.from_numpy(render(scene)).permute(2, 0, 1)[None])
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert data["latents"].shape == (3, 4, 16, 16) and data["scaling_factor"] == vae.config.scaling_factor
    torch.testing.assert_close(data["latents"][2:].float(), expected, atol=2e-3, rtol=2e-3)  # stored as float16
    assert data["ids"][2].tolist() == tokenizer()(scene.caption, padding="max_length", max_length=77).input_ids


def test_vae_stage_fine_tunes_the_whole_vae_on_world_2(tmp_path):
    from diffusers import AutoencoderKL
    from lab.load import BUILTIN
    main(["vae", "--run", str(tmp_path), "--init", str(BUILTIN["shapes"]), "--world", "2", "--train-encoder",
          "--scenes", "4", "--steps", "2", "--batch", "2", "--workers", "1"])
    state = torch.load(tmp_path / "vae.ckpt")["model"]
    shipped = AutoencoderKL.from_pretrained(str(BUILTIN["shapes"]), subfolder="vae").state_dict()
    assert not torch.equal(state["encoder.conv_in.weight"], shipped["encoder.conv_in.weight"])  # the encoder learnt
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["world"] == 2
    assert torch.load(tmp_path / "latents.pt")["latents"].shape == (4, 4, 16, 16)  # re-encoded with the new encoder
