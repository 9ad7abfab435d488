"""lab.world.train's UNet stage on a few real scenes: checkpoints resume (exactly, and from the format before
accelerate), and --processes trains data-parallel."""
import json

import numpy as np
import pytest
import torch

from lab.world import make_scene
from lab.world.train import main, tokenizer


def _tiny_run(tmp_path, n=16):
    """A run folder holding what the UNet stage reads: latents (random here) and the captions' token ids."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    captions = [make_scene(i, "train").caption for i in range(n)]
    ids = tokenizer()(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    torch.save({"latents": latents, "ids": ids.int(), "scaling_factor": 0.35}, tmp_path / "latents.pt")
    return tmp_path


def _checkpoint(run, variant="sd"):
    """The UNet stage's checkpoint folder (lab.world.checkpoint) read back as one dict, keyed as the single file
    before accelerate was: step, world, ..., unet, ema_unet, opt, and text / ema_text on world 1."""
    from safetensors.torch import load_file
    folder = run / f"unet-{variant}"

    def weights(name):
        (path,) = (folder / name).glob("*.safetensors")
        return load_file(str(path))

    out = json.loads((folder / "state.json").read_text())
    out |= {"unet": weights("unet"), "ema_unet": weights("ema_unet"), "opt": torch.load(folder / "optimizer.bin")}
    if (folder / "text_encoder").exists():
        out |= {"text": weights("text_encoder"), "ema_text": weights("ema_text_encoder")}
    return out


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_unet_stage_checkpoints_and_resumes(tmp_path):
    run = _tiny_run(tmp_path)
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "4", "--ema", "0.9"])
    first = _checkpoint(run)
    main(["unet", "--run", str(run), "--steps", "3", "--batch", "4", "--ema", "0.9"])
    second = _checkpoint(run)
    assert (first["step"], second["step"]) == (2, 3)
    name = "conv_in.weight"
    assert not torch.equal(first["unet"][name], second["unet"][name])  # the third step trained
    assert not torch.equal(second["unet"][name], second["ema_unet"][name])


def test_two_processes_train_together_and_stop_at_one_step(tmp_path):
    run = _tiny_run(tmp_path)
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "2", "--processes", "2", "--ema", "0.9",
          "--lr-final", "1e-5"])  # the annealed rate is read off process 0's clock and shared
    ckpt = _checkpoint(run)
    assert ckpt["step"] == 2
    done = [row for row in _log(run) if row.get("done")]
    assert len(done) == 1 and done[0]["processes"] == 2 and done[0]["step"] == 2  # only process 0 writes
    assert np.isfinite(ckpt["unet"]["conv_in.weight"].numpy()).all()
    main(["unet", "--run", str(run), "--steps", "3", "--batch", "2", "--ema", "0.9"])  # goes on in one process
    assert _checkpoint(run)["step"] == 3


def _same(a, b):
    """The weights (unet, ema_unet, text, ema_text) and AdamW's moments of two checkpoints, compared exactly."""
    for part in ("unet", "ema_unet", "text", "ema_text"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    moments = [(a["opt"]["state"][i], b["opt"]["state"][i]) for i in a["opt"]["state"]]
    assert all(torch.equal(x[k], y[k]) for x, y in moments for k in x)


STEPS = ["--batch", "2", "--accumulate", "2", "--ema", "0.9"]  # each step: 2 accumulated micro-batches of 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The checkpoint of 3 steps in one go, which a resumed run must reproduce."""
    run = _tiny_run(tmp_path_factory.mktemp("uninterrupted"))
    main(["unet", "--run", str(run), "--steps", "3"] + STEPS)
    return _checkpoint(run)


def test_a_resumed_run_continues_the_uninterrupted_one_exactly(tmp_path, uninterrupted):
    """Each micro-batch's draws are seeded by its place in the run and the checkpoint keeps the optimiser and the
    EMA, so 2 steps then 1 more are the 3 steps of one go, bit for bit."""
    run = _tiny_run(tmp_path)
    main(["unet", "--run", str(run), "--steps", "2"] + STEPS)
    main(["unet", "--run", str(run), "--steps", "3"] + STEPS)
    resumed = _checkpoint(run)
    assert resumed["step"] == uninterrupted["step"] == 3
    _same(resumed, uninterrupted)


def test_a_checkpoint_in_the_format_before_accelerate_resumes_and_exports(tmp_path, uninterrupted):
    """<run>/unet-sd.ckpt, one torch.save dict, is read when there is no checkpoint folder: the run goes on as if
    it had never stopped, its next checkpoint is the folder, and export reads either."""
    import shutil
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from lab.world.train import vae_config
    run = _tiny_run(tmp_path / "run")
    main(["unet", "--run", str(run), "--steps", "2"] + STEPS)
    legacy = {k: v for k, v in _checkpoint(run).items() if k != "text_encoder"}  # world 1 had no such key
    torch.save(legacy, run / "unet-sd.ckpt")
    shutil.rmtree(run / "unet-sd")
    torch.save({"model": AutoencoderKL(**vae_config()).state_dict(), "step": 5}, run / "vae.ckpt")
    main(["export", "--run", str(run), "--out", str(tmp_path / "from-file")])
    main(["unet", "--run", str(run), "--steps", "3"] + STEPS)
    resumed = _checkpoint(run)
    _same(resumed, uninterrupted)
    assert (run / "unet-sd.ckpt").exists()  # left as it was; the folder is read from now on
    rows = [row for row in _log(run) if row.get("resumed")]
    assert len(rows) == 1 and rows[0]["resumed"] == "unet-sd.ckpt" and rows[0]["step"] == 2
    main(["export", "--run", str(run), "--out", str(tmp_path / "from-folder")])
    for name, ema in (("from-file", legacy["ema_unet"]), ("from-folder", resumed["ema_unet"])):
        exported = UNet2DConditionModel.from_pretrained(str(tmp_path / name / "unet")).state_dict()
        assert all(torch.equal(v, ema[k]) for k, v in exported.items())
    assert json.loads((tmp_path / "from-folder" / "training.json").read_text())["unet_steps"] == 3


def test_lr_final_falls_along_a_cosine_and_ema_out_writes_loadable_folders(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    run, out = _tiny_run(tmp_path / "run"), tmp_path / "out"
    main(["unet", "--run", str(run), "--steps", "4", "--batch", "2", "--lr", "1e-3", "--lr-final", "1e-5",
          "--ema", "0.9", "--ema-out", str(out)])
    ckpt = _checkpoint(run)
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


def test_ema_out_half_writes_the_world_2_unet_alone_in_float16_and_init_reads_it_back(tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel
    run, out, encoder = _tiny_run(tmp_path / "run"), tmp_path / "out", tmp_path / "text_encoder"
    data = torch.load(run / "latents.pt")
    torch.save(data | {"world": 2}, run / "latents.pt")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=77)).save_pretrained(str(encoder))
    args = ["--batch", "2", "--ema", "0.9", "--text-encoder", str(encoder)]
    main(["unet", "--run", str(run), "--steps", "2", *args, "--ema-out", str(out), "--ema-out-half"])
    assert sorted(p.name for p in out.iterdir()) == ["unet"]  # the frozen tower is --text-encoder's folder already
    stored = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = _checkpoint(run)["ema_unet"]
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert all(torch.equal(stored[k], v.half()) for k, v in ema.items())
    # a new run starts from those weights (cast back to float32), with a fresh optimiser
    second = _tiny_run(tmp_path / "second")
    torch.save(data | {"world": 2}, second / "latents.pt")
    main(["unet", "--run", str(second), "--steps", "0", *args, "--init", str(out)])
    started = UNet2DConditionModel.from_pretrained(str(second / "unet-sd" / "ema_unet")).state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, stored[k].float()) for k, v in started.items())


def test_latents_from_an_encoder_only_vae_ckpt_keep_its_scale_and_export_needs_a_decoder(tmp_path):
    from diffusers import AutoencoderKL
    from lab.load import BUILTIN
    from lab.world.train import ENCODER
    shipped = AutoencoderKL.from_pretrained(str(BUILTIN["shapes"]), subfolder="vae")
    (tmp_path / "whole").mkdir()
    torch.save({"model": shipped.state_dict(), "step": 7}, tmp_path / "whole" / "vae.ckpt")
    (tmp_path / "pack").mkdir()
    encoder = {k: v for k, v in shipped.state_dict().items() if k.startswith(ENCODER)}
    torch.save({"model": encoder, "step": 7, "encoder_only": True, "scaling_factor": 0.4},
               tmp_path / "pack" / "vae.ckpt")
    for name in ("whole", "pack"):
        main(["latents", "--run", str(tmp_path / f"run-{name}"), "--init", str(tmp_path / name), "--world", "2",
              "--scenes", "3", "--workers", "1"])
    whole, pack = (torch.load(tmp_path / f"run-{name}" / "latents.pt") for name in ("whole", "pack"))
    assert pack["scaling_factor"] == 0.4 and whole["scaling_factor"] != 0.4  # the old run's scale, not 1 / std
    scaled = whole["latents"].float() / whole["scaling_factor"] * 0.4
    torch.testing.assert_close(pack["latents"].float(), scaled, atol=2e-3, rtol=2e-3)  # the same encoder
    kept = torch.load(tmp_path / "run-pack" / "vae.ckpt")
    assert kept["encoder_only"] and set(kept["model"]) == set(encoder)  # no random decoder written as if trained
    with pytest.raises(SystemExit, match="encoder alone"):
        main(["vae", "--run", str(tmp_path / "dec"), "--init", str(tmp_path / "pack"), "--scenes", "2"])


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
          "--scenes", "4", "--steps", "2", "--batch", "2", "--workers", "1", "--object-weight", "4"])
    state = torch.load(tmp_path / "vae.ckpt")["model"]
    shipped = AutoencoderKL.from_pretrained(str(BUILTIN["shapes"]), subfolder="vae").state_dict()
    assert not torch.equal(state["encoder.conv_in.weight"], shipped["encoder.conv_in.weight"])  # the encoder learnt
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["world"] == 2
    assert torch.load(tmp_path / "latents.pt")["latents"].shape == (4, 4, 16, 16)  # re-encoded with the new encoder
    # then the decoder alone goes on from that run, so that latents encoded by it stay valid (SD's ft-MSE decoder)
    main(["vae", "--run", str(tmp_path / "decoder"), "--init", str(tmp_path), "--world", "2", "--scenes", "4",
          "--steps", "1", "--batch", "2", "--workers", "1"])
    tuned = torch.load(tmp_path / "decoder" / "vae.ckpt")["model"]
    assert torch.equal(tuned["encoder.conv_in.weight"], state["encoder.conv_in.weight"])
    assert not torch.equal(tuned["decoder.conv_out.weight"], state["decoder.conv_out.weight"])


def test_world_2_unet_trains_on_a_frozen_clip_text_tower_and_exports_it(tmp_path):
    """The world-2 chain, as SD: a VAE run's encoder makes the latents, the UNet (cross-attention at every
    resolution) learns on a frozen CLIP text tower, and the export ships that tower unchanged, in float16."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel
    from lab.load import BUILTIN
    from lab.world import world_of
    vae_run, run, encoder = tmp_path / "vae", tmp_path / "unet", tmp_path / "clip" / "text_encoder"
    vae_run.mkdir()
    shipped = AutoencoderKL.from_pretrained(str(BUILTIN["shapes"]), subfolder="vae")
    torch.save({"model": shipped.state_dict(), "step": 7}, vae_run / "vae.ckpt")
    (tmp_path / "vae-other").mkdir()
    other = {k: v + 0.01 if k.startswith("encoder.") else v for k, v in shipped.state_dict().items()}
    torch.save({"model": other, "step": 7}, tmp_path / "vae-other" / "vae.ckpt")
    main(["latents", "--run", str(run), "--init", str(vae_run), "--world", "2", "--scenes", "6", "--workers", "1"])
    assert torch.load(run / "latents.pt")["world"] == 2
    try:
        main(["unet", "--run", str(run), "--steps", "1", "--batch", "2"])
        raise AssertionError("world-2 latents trained without a text encoder")
    except SystemExit as e:
        assert "--text-encoder" in str(e)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                        num_attention_heads=4, max_position_embeddings=77, eos_token_id=49407))
    text.save_pretrained(str(encoder))
    main(["unet", "--run", str(run), "--steps", "2", "--batch", "2", "--ema", "0.9", "--text-encoder", str(encoder)])
    main(["unet", "--run", str(run), "--steps", "3", "--batch", "2", "--ema", "0.9"])  # resumes on the same encoder
    ckpt = _checkpoint(run)
    assert ckpt["step"] == 3 and ckpt["world"] == 2 and "text" not in ckpt
    decoder = tmp_path / "decoder"  # a decoder fine-tuned on after the latents were made, on the same encoder
    main(["vae", "--run", str(decoder), "--init", str(vae_run), "--world", "2", "--scenes", "2", "--steps", "1",
          "--batch", "2", "--workers", "1"])
    main(["export", "--run", str(run), "--out", str(tmp_path / "model"), "--vae", str(decoder)])
    tuned = torch.load(decoder / "vae.ckpt")["model"]["decoder.conv_out.weight"]
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))  # float16 on disk, float32 here
    cross = {".".join(name.split(".")[:2]) for name, _ in pipe.unet.named_modules() if name.endswith("attn2")}
    assert cross == {"down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block.attentions",
                     "up_blocks.0", "up_blocks.1", "up_blocks.2"}  # every resolution, 16x16 to 4x4
    written = pipe.text_encoder.state_dict()
    assert all(torch.equal(written[k], v.half().float()) for k, v in text.state_dict().items())  # frozen, as given
    stored = load_file(str(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16} and pipe.unet.config.cross_attention_dim == 128
    assert torch.equal(pipe.vae.decoder.conv_out.weight, tuned.half().float())
    with pytest.raises(SystemExit, match="another encoder"):  # a VAE whose encoder did not make the latents
        main(["export", "--run", str(run), "--out", str(tmp_path / "other"), "--vae", str(tmp_path / "vae-other")])
    assert world_of(tmp_path / "model") == 2  # so the quality benchmark and the studies draw world-2 scenes
    image = pipe("a red circle on a striped background", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()


def test_a_16_channel_vae_makes_latents_a_unet_trains_and_exports_on(tmp_path):
    """--latent-channels 16 (SD3's and Flux's latent width): the VAE, a resumed run (which keeps its own channels
    whatever the option says), the latents, the UNet, the DiT and the export all follow the VAE's channels."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel
    from lab.world.train_dit import main as dit
    vae_run, run, encoder = tmp_path / "vae", tmp_path / "unet", tmp_path / "text_encoder"
    args = ["vae", "--run", str(vae_run), "--world", "2", "--scenes", "2", "--batch", "2", "--workers", "1"]
    main(args + ["--steps", "1", "--latent-channels", "16"])
    main(args + ["--steps", "2"])  # resumes: still 16 channels
    state = torch.load(vae_run / "vae.ckpt")
    assert state["step"] == 2 and state["model"]["quant_conv.weight"].shape[0] == 32  # mean and log-variance
    main(["latents", "--run", str(run), "--init", str(vae_run), "--world", "2", "--scenes", "2", "--workers", "1"])
    assert torch.load(run / "latents.pt")["latents"].shape == (2, 16, 16, 16)
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=77, eos_token_id=49407)
                  ).save_pretrained(str(encoder))
    main(["unet", "--run", str(run), "--steps", "1", "--batch", "2", "--text-encoder", str(encoder)])
    dit(["dit", "--run", str(run), "--steps", "1", "--batch", "2", "--text-encoder", str(encoder)])
    assert json.loads((run / "dit" / "transformer" / "config.json").read_text())["in_channels"] == 16
    main(["export", "--run", str(run), "--out", str(tmp_path / "model")])
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 16
    image = pipe("a red circle on a striped background", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()


def test_the_progress_bar_shows_the_step_it_is_given():
    """Every 100 VAE steps and 500 UNet steps the bar shows step= and the loss: that call once crashed the stage."""
    from lab.world.train import Clock, _advance, _progress
    clock = Clock(minutes=10, steps=200, every=60)
    bar = _progress(clock, first_step=100, desc="vae")
    _advance(bar, clock, 150, step=150, rec=0.1)
    assert bar.n == (0 if bar.disable else 50)  # half of the 100 steps this run may take (off with LAB_PROGRESS=0)
