"""DIFT featuriser on real models: tiny SD1.5 / SD2.1 / SDXL pipelines and the built-in model."""
import numpy as np
import pytest
import torch
from PIL import Image

from analyses.dift.features import (block_features, condition, encode, featurize, input_size, load_image,
                                    noise_schedule, prepare)
from lab.world import Obj, Scene, render
from devices import batch_close
from tiny_models import one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module", params=[("sd15", "ddim"), ("sd21", "ddim"), ("sdxl", "euler")], ids=lambda p: p[0])
def tiny(request):
    return tiny_pipeline(*request.param)


@pytest.fixture(scope="module")
def shapes(shapes_pipe):  # the built-in model, loaded once per session (conftest)
    return shapes_pipe


@pytest.fixture(scope="module")
def image():
    return render(Scene((Obj("arrow", "red", "large", 60, 56, 22.0, "left"),), "white"))  # (128, 128, 3) uint8


def _reference(pipe, latents, t, block, cond, seeds, ensemble):
    """The block's output from full UNet passes read with a plain forward hook, averaged over the same noise."""
    module = dict(pipe.unet.named_modules())[block]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    sched, out = noise_schedule(pipe), []
    try:
        with torch.no_grad():
            for i, seed in enumerate(seeds):
                noise = torch.randn((ensemble, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
                ts = torch.full((ensemble,), t, dtype=torch.long)
                zt = sched.add_noise(latents[i:i + 1].expand(ensemble, -1, -1, -1), noise, ts)
                kw = {k: ({kk: vv[i:i + 1].expand(ensemble, *vv.shape[1:]) for kk, vv in v.items()}
                          if isinstance(v, dict) else v[i:i + 1].expand(ensemble, *v.shape[1:]))
                      for k, v in cond.items()}
                pipe.unet(zt, ts, **kw)
                out.append(seen.pop().mean(0))
    finally:
        handle.remove()
    return torch.stack(out)  # (N, C, h, w)


def test_stopping_early_gives_the_block_output_of_a_full_pass(tiny, image):
    prep = prepare(tiny, [image, image[:, ::-1]], size=64)
    z = encode(tiny, prep.pixels)
    cond = condition(tiny, ["a red arrow", ""], prep.input_sizes[0])
    for block in ("up_blocks.1", "down_blocks.1"):
        ours = block_features(tiny, z, 300, [block], cond, prep.seeds, ensemble=3, batch_size=4)[block]
        ref = _reference(tiny, z, 300, block, cond, prep.seeds, 3)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_several_blocks_in_one_pass_equal_one_block_each(tiny, image):
    prep = prepare(tiny, [image], size=64)
    z, cond = encode(tiny, prep.pixels), condition(tiny, [""], prep.input_sizes[0])
    both = block_features(tiny, z, 100, ["up_blocks.1", "up_blocks.0"], cond, prep.seeds, ensemble=2)
    for block, value in both.items():
        alone = block_features(tiny, z, 100, [block], cond, prep.seeds, ensemble=2)[block]
        torch.testing.assert_close(value, alone, atol=1e-6, rtol=1e-5)


def test_sdxl_reads_the_prompt_and_its_added_conditioning(image):
    pipe = tiny_pipeline("sdxl", "euler")
    cond = condition(pipe, ["a red arrow", ""], (64, 96))
    assert cond["added_cond_kwargs"]["time_ids"].tolist()[0] == [64, 96, 0, 0, 64, 96]
    assert cond["added_cond_kwargs"]["text_embeds"].shape[0] == 2
    a, b = featurize(pipe, [image, image], ensemble=1, prompt=["a red arrow", "a blue circle"])
    assert (a.tensor - b.tensor).abs().max() > 1e-6  # same image and noise, different text


def test_a_batch_equals_one_by_one(shapes, image):
    images = [image, image[:100, 10:], np.ascontiguousarray(image[::-1])]  # two input sizes under "multiple"
    batch = featurize(shapes, images, ensemble=2, size="multiple", batch_size=3)  # ensembles split across calls
    for img, fmap in zip(images, batch):
        alone = featurize(shapes, img, ensemble=2, size="multiple", batch_size=8)[0]
        assert fmap.image_size == alone.image_size and fmap.input_size == alone.input_size
        batch_close(fmap.tensor, alone.tensor)  # on a GPU kernels differ with the batch: its measured tolerance


def test_noise_depends_on_the_image_and_seed_only(shapes, image):
    a = featurize(shapes, [image], ensemble=1, seed=0)[0].tensor
    b = featurize(shapes, [image[::-1].copy(), image], ensemble=1, seed=0)[1].tensor
    c = featurize(shapes, [image], ensemble=1, seed=1)[0].tensor
    batch_close(a, b)  # b was computed in a batch of two
    assert (a - c).abs().max() > 1e-4


def test_non_square_odd_sizes_keep_the_image_frame(shapes, image):
    odd = image[:45, :71]
    fmap = featurize(shapes, odd, ensemble=1, size="multiple")[0]
    assert fmap.image_size == (45, 71) and fmap.input_size == (32, 64)
    assert fmap.tensor.shape == (64, 4, 8)  # up_blocks.1 of the built-in model: latent resolution
    assert featurize(shapes, odd, ensemble=1)[0].input_size == (128, 128)  # native size
    assert input_size(shapes, (45, 71), (96, 160)) == (96, 160)


def test_images_from_files_pil_arrays_and_tensors_agree(tmp_path, image):
    Image.fromarray(image).save(tmp_path / "a.png")
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    ref = load_image(image)
    assert ref.shape == (3, 128, 128) and 0 <= ref.min() and ref.max() <= 1
    for other in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(image), rgba, image / 255.0,
                  torch.from_numpy(image).permute(2, 0, 1)):
        torch.testing.assert_close(load_image(other), ref)
    assert load_image(image[..., 0]).shape == (3, 128, 128)


def test_bad_inputs_are_clear_errors(shapes, image):
    with pytest.raises(ValueError, match=r"unknown block 'up_block.1'; blocks: down_blocks.0, .*up_blocks.2"):
        featurize(shapes, image, block="up_block.1")
    with pytest.raises(ValueError, match=r"unknown block 7"):
        featurize(shapes, image, block=7)
    for t in (1000, -1):
        with pytest.raises(ValueError, match=rf"t={t} is outside \[0, 1000\)"):
            featurize(shapes, image, t=t)
    with pytest.raises(ValueError, match="integer timestep"):
        featurize(shapes, image, t=0.5)
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 3\) or \(H, W, 4\); got \(5,\)"):
        featurize(shapes, [np.zeros(5)])
    with pytest.raises(ValueError, match="no images"):
        featurize(shapes, [])
    with pytest.raises(FileNotFoundError, match="no image file"):
        featurize(shapes, "missing.jpg")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        featurize(shapes, image.astype(np.float32))
    with pytest.raises(ValueError, match=r"not a multiple of 32 .* use \(96, 128\)"):
        featurize(shapes, image, size=(100, 128))
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        featurize(shapes, image, prompt=["a", "b"])


def _snapshot(pipe):
    s = pipe.scheduler
    return {
        "params": {n: float(p.detach().double().sum()) for part in ("unet", "vae", "text_encoder")
                   for n, p in getattr(pipe, part).named_parameters(prefix=part)},
        "devices": {m.device for m in (pipe.unet, pipe.vae, pipe.text_encoder)},
        "dtypes": {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)},
        "training": {m.training for m in (pipe.unet, pipe.vae, pipe.text_encoder)},
        "scheduler": (type(s), dict(s.config), s.timesteps.tolist(), s.num_inference_steps,
                      s.alphas_cumprod.device, getattr(s, "_step_index", None)),
        "processors": dict(pipe.unet.attn_processors),
    }


def test_the_pipeline_is_unchanged(image):
    pipe = tiny_pipeline("sd21")
    pipe.scheduler.set_timesteps(7)
    before = _snapshot(pipe)
    featurize(pipe, [image, image[:50]], ensemble=2, block="up_blocks.2", size="multiple")
    block_features(pipe, encode(pipe, prepare(pipe, image, 64).pixels), 5, ["up_blocks.0", "up_blocks.1"],
                   condition(pipe, [""], (64, 64)), [0], ensemble=1)
    after = _snapshot(pipe)
    assert after["processors"].keys() == before["processors"].keys()
    assert all(after["processors"][k] is v for k, v in before["processors"].items())
    assert {k: v for k, v in after.items() if k != "processors"} == {k: v for k, v in before.items()
                                                                     if k != "processors"}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())
