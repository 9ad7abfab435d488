"""lab.world.train_dit on a tiny world-2 run: the transformer trains and resumes on a frozen CLIP tower, the export is
an SD3 pipeline folder that lab.load runs, whose text conditioning is exactly what training fed, and the lab's DiT
hooks and DAAM read it."""
import json

import numpy as np
import pytest
import torch
from tiny_models import one_thread  # noqa: F401 (autouse fixture)

from lab.world import make_scene
from lab.world.train import token_ids, vae_config
from lab.world.train_dit import (PAD_ROWS, conditioning, main, null_encoder, text_encoder, transformer_config,
                                 use_pad_keys)

CAPTIONS = ["a red circle on a striped background", "", "a big blue square and a small green triangle"]


def _encoder(folder):
    """What clip-export writes, tiny: clip/ (a CLIPModel, width 128) and text_encoder/ (its text tower)."""
    from transformers import CLIPModel, CLIPTextModel
    from lab.world.clip import clip_config
    torch.manual_seed(0)
    clip = CLIPModel(clip_config(width=128, layers=1))
    text = CLIPTextModel(clip.config.text_config)
    getattr(text, "text_model", text).load_state_dict(clip.text_model.state_dict())
    clip.save_pretrained(str(folder / "clip"))
    text.save_pretrained(str(folder / "text_encoder"))
    return folder / "text_encoder", clip


def _checkpoint(run):
    """The DiT checkpoint folder (lab.world.checkpoint) read back as one dict, keyed as dit.ckpt was before
    accelerate: model, ema, opt, config, and state.json's step, text_encoder, world, scaling_factor, sessions."""
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file
    folder = run / "dit"

    def weights(name):
        (path,) = (folder / name).glob("*.safetensors")
        return load_file(str(path))

    config = SD3Transformer2DModel.load_config(str(folder / "transformer"))
    return json.loads((folder / "state.json").read_text()) | {
        "model": weights("transformer"), "ema": weights("ema_transformer"), "opt": torch.load(folder / "optimizer.bin"),
        "config": {k: v for k, v in config.items() if not k.startswith("_")}}


def _tiny_run(run, n=8):
    """A latents run of world 2 (random latents, real captions' ids) and the VAE it names."""
    from diffusers import AutoencoderKL
    run.mkdir()
    ids = torch.from_numpy(token_ids([make_scene(i, "train", world=2).caption for i in range(n)]))
    latents = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    torch.save({"latents": latents, "ids": ids, "scaling_factor": 0.35, "world": 2}, run / "latents.pt")
    torch.manual_seed(0)
    torch.save({"model": AutoencoderKL(**vae_config()).state_dict(), "step": 5}, run / "vae.ckpt")
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit")
    (tmp / "enc").mkdir()
    folder, clip = _encoder(tmp / "enc")
    run, out = _tiny_run(tmp / "run"), tmp / "shapes-dit"
    args = ["--run", str(run), "--batch", "2", "--ema", "0.9"]
    main(["dit", *args, "--steps", "2", "--text-encoder", str(folder)])
    first = _checkpoint(run)
    main(["dit", *args, "--steps", "3"])  # resumes on the checkpoint's encoder
    main(["export", "--run", str(run), "--out", str(out)])
    return dict(run=run, out=out, folder=folder, clip=clip, first=first, second=_checkpoint(run))


@pytest.fixture(scope="module")
def pipe(trained):
    import lab
    return lab.load(trained["out"], device="cpu")


def test_dit_stage_checkpoints_and_resumes(trained):
    first, second = trained["first"], trained["second"]
    assert (first["step"], second["step"]) == (2, 3) and second["text_encoder"] == str(trained["folder"])
    name = "pos_embed.proj.weight"
    assert not torch.equal(first["model"][name], second["model"][name])  # the third step trained
    assert not torch.equal(second["model"][name], second["ema"][name])
    assert [s["steps"] for s in second["sessions"]] == [2, 1]


def _same(a, b):
    """The weights, the EMA and AdamW's moments of two checkpoints, compared exactly."""
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    moments = [(a["opt"]["state"][i], b["opt"]["state"][i]) for i in a["opt"]["state"]]
    assert moments and all(torch.equal(x[k], y[k]) for x, y in moments for k in x)


@pytest.fixture(scope="module")
def uninterrupted(trained, tmp_path_factory):
    """The checkpoint of the trained run's 3 steps taken in one go."""
    run = _tiny_run(tmp_path_factory.mktemp("dit-uninterrupted") / "run")
    main(["dit", "--run", str(run), "--batch", "2", "--ema", "0.9", "--steps", "3", "--text-encoder",
          str(trained["folder"])])
    return _checkpoint(run)


def test_two_steps_then_one_equal_three_in_one_go_bit_for_bit(trained, uninterrupted):
    """Each micro-batch's draws are seeded by its place in the run and the checkpoint keeps AdamW's state and the
    EMA, so a resumed run continues the uninterrupted one exactly."""
    assert trained["second"]["step"] == uninterrupted["step"] == 3
    _same(trained["second"], uninterrupted)


def test_a_dit_ckpt_of_the_format_before_accelerate_resumes_and_exports(trained, uninterrupted, tmp_path):
    """<run>/dit.ckpt, one torch.save dict, is read when there is no checkpoint folder: the run goes on as if it
    had never stopped, its next checkpoint is the folder, and export reads the file too."""
    from safetensors.torch import load_file
    run = _tiny_run(tmp_path / "run")
    torch.save(trained["first"], run / "dit.ckpt")  # the 2-step checkpoint, keyed as the old file was
    main(["export", "--run", str(run), "--out", str(tmp_path / "from-file")])
    exported = load_file(str(tmp_path / "from-file" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(v, trained["first"]["ema"][k].half()) for k, v in exported.items())
    main(["dit", "--run", str(run), "--batch", "2", "--ema", "0.9", "--steps", "3"])
    resumed = _checkpoint(run)
    _same(resumed, uninterrupted)
    assert (run / "dit.ckpt").exists() and [s["steps"] for s in resumed["sessions"]] == [2, 1]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["resumed"], r["step"]) for r in rows if r.get("resumed")] == [("dit.ckpt", 2)]


def test_init_starts_a_new_run_from_a_float16_folder_and_ema_out_writes_it_back(trained, tmp_path):
    from safetensors.torch import load_file
    run, out = _tiny_run(tmp_path / "run"), tmp_path / "out"
    main(["dit", "--run", str(run), "--text-encoder", str(trained["folder"]), "--steps", "0", "--batch", "2",
          "--init", str(trained["out"]), "--ema-out", str(out)])  # the export: float16 transformer/
    shipped = load_file(str(trained["out"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    written = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == ["transformer"]
    assert {v.dtype for v in written.values()} == {torch.float16}
    assert written.keys() == shipped.keys() and all(torch.equal(written[k], v) for k, v in shipped.items())
    assert _checkpoint(run)["sessions"][-1]["init"] == str(trained["out"])


def test_a_resumed_run_refuses_another_text_encoder(trained, tmp_path):
    with pytest.raises(SystemExit, match="frozen text encoder"):
        main(["dit", "--run", str(trained["run"]), "--steps", "4", "--text-encoder", str(tmp_path)])


def test_the_tower_gets_the_clips_own_text_projection(trained):
    text = text_encoder(trained["folder"])
    assert torch.equal(text.text_projection.weight, trained["clip"].text_projection.weight.half().float())


def test_training_conditioning_is_exactly_what_the_exported_pipeline_feeds(trained, pipe):
    """The pipeline's encode_prompt (from strings, on the float16 weights it loaded) against what training computes
    from the stored token ids: bit-equal, prompts and the empty negative alike."""
    prompt, negative, pooled, negative_pooled = pipe.encode_prompt(CAPTIONS, None, None)  # guidance: "" negative
    text, joint = text_encoder(trained["folder"]), pipe.transformer.config.joint_attention_dim
    context, pool = conditioning(text, null_encoder(), torch.from_numpy(token_ids(CAPTIONS)).long(), joint)
    assert prompt.shape == (3, 77 + PAD_ROWS, 128 + 8) and torch.equal(prompt, context) and torch.equal(pooled, pool)
    empty, empty_pool = conditioning(text, null_encoder(), torch.from_numpy(token_ids([""] * 3)).long(), joint)
    assert torch.equal(negative, empty) and torch.equal(negative_pooled, empty_pool)


def test_pad_keys_on_78_rows_equal_the_pipelines_333():
    """Training feeds one zero row for the pipeline's 256: PadKeys counts its key 256 times."""
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    model = SD3Transformer2DModel(**transformer_config(width=32, heads=2, layers=3)).eval()
    context = torch.randn(2, 77 + PAD_ROWS, 136)
    context[:, 77:] = 0  # (2, 333, 136): what encode_prompt gives without a T5
    pooled, x, t = torch.randn(2, 136), torch.randn(2, 4, 16, 16), torch.tensor([100.0, 900.0])
    with torch.no_grad():
        full = model(x, context, pooled, t).sample  # diffusers' JointAttnProcessor2_0 on 333 rows
        plain = model(x, context[:, :78], pooled, t).sample  # the same on 78 rows, without PadKeys
        use_pad_keys(model)
        short = model(x, context[:, :78], pooled, t).sample
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    assert (plain - full).abs().max() > 1e-3  # the counted key is what makes them equal


def test_export_is_a_float16_sd3_folder_that_lab_load_runs(trained, pipe):
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file
    out = trained["out"]
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    stored = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    image = pipe("a red circle on a striped background", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()
    plain = StableDiffusion3Pipeline.from_pretrained(str(out), text_encoder_3=None, tokenizer_3=None)  # diffusers'
    assert plain.scheduler.config.shift == 1.0  # way to load SD3 without T5; lab.load reads it off model_index.json
    meta = json.loads((out / "training.json").read_text())
    assert meta["transformer_steps"] == 3 and meta["world"] == 2 and len(meta["transformer"]) == 2
    logged = [json.loads(l) for l in (trained["run"] / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["stage"] == "dit-export" and logged[-1]["weights_mib"] < 30


def test_the_lab_hooks_and_daam_read_the_exported_transformer(pipe):
    from analyses import daam
    from lab import hooks
    views = [p for p in hooks.points(pipe, image_size=128) if p.kind == "image->text"]
    assert len(views) == pipe.transformer.config.num_layers
    assert views[0].resolution == (8, 8) and views[0].text_tokens == 77 + PAD_ROWS
    run = daam.generate(pipe, "a red circle", seed=0, steps=2)
    assert run.images.shape == (1, 128, 128, 3) and list(run.cache) == daam.daam_layers(pipe)


def test_daam_maps_a_word_of_the_exported_dit_through_its_clip_window(pipe):
    """SD3 without T5: the word is found in the CLIP window alone."""
    from analyses import daam
    run = daam.generate(pipe, "a red circle", seed=0, steps=2)
    word = daam.word_map(daam.global_maps(run), pipe, "circle")
    assert word.shape == (128, 128) and torch.isfinite(word).all() and word.max() > 0
