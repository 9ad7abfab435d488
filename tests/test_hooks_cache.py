"""Cache: plain data that round-trips through safetensors and is analysable without the model."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from tiny_models import generate, one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import Cache, Keep, select, trace


@pytest.fixture(scope="module")
def cache():
    pipe = tiny_pipeline("sd15")
    names = select(pipe, kind="attn2", block="up")[:2] + ["mid_block"]
    with trace(pipe, names, keep=Keep(steps="all", heads="mean"), meta={"seed": 0}) as tr:
        generate(pipe, steps=2, seed=0)
    return tr.cache


def test_cache_is_a_mapping_with_axes_and_metadata(cache):
    name = next(iter(cache))
    assert isinstance(cache[name], torch.Tensor) and len(cache) == 3
    assert cache.axes[name] == ("step", "branch", "batch", "query", "key")
    for key in ("model", "prompt", "seed", "timesteps", "guidance_scale", "image_size", "latent_size",
                "num_inference_steps", "diffusers_version", "lab_version", "resolution"):
        assert key in cache.meta, key
    assert cache.meta["seed"] == 0 and cache.meta["guidance_scale"] == 7.5
    json.dumps(cache.meta)  # plain data


def test_save_then_load_gives_the_same_cache(cache, tmp_path):
    path = cache.save(tmp_path / "run.safetensors")
    back = Cache.load(path)
    assert list(back) == list(cache) and back.axes == cache.axes and back.meta == cache.meta
    assert all(torch.equal(back[n], cache[n]) for n in cache)
    assert os.listdir(tmp_path) == ["run.safetensors"]  # no temp file left behind


def test_save_replaces_an_existing_file_atomically(cache, tmp_path):
    path = tmp_path / "run.safetensors"
    path.write_bytes(b"old")
    cache.save(path)
    assert Cache.load(path).meta == cache.meta and os.listdir(tmp_path) == ["run.safetensors"]


def test_a_loaded_cache_is_analysable_without_the_model(cache, tmp_path):
    back = Cache.load(cache.save(tmp_path / "run.safetensors"))
    name = next(n for n in back if back.meta["kinds"][n] == "attn2")
    h, w = back.resolution(name)
    heat = back.take(name, step=1, branch="cond", batch=0)[:, 2].reshape(h, w)  # token 2's map at step 1
    assert heat.shape == (h, w) and back.meta["tokens"][0][2] == "red</w>"


def test_a_corrupt_file_is_an_error_naming_it(cache, tmp_path):
    path = cache.save(tmp_path / "run.safetensors")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{path}.*not a readable safetensors file"):
        Cache.load(path)


def test_a_safetensors_file_that_is_not_a_cache_is_an_error_naming_it(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=f"{path} is a safetensors file but not a lab cache.*conv.weight"):
        Cache.load(path)


def test_take_indexes_axes_by_name(cache):
    name = next(iter(cache))
    assert torch.equal(cache.take(name, step=1, branch="uncond"), cache[name][1, 1])
    with pytest.raises(ValueError, match="kept steps: \\[0, 1\\]"):
        cache.take(name, step=5)
    with pytest.raises(ValueError, match="no axis 'head'; axes: step, branch, batch, query, key"):
        cache.take(name, head=0)


def test_an_unknown_point_suggests_the_nearest(cache):
    with pytest.raises(KeyError, match="nearest: mid_block"):
        cache["mid_blocks"]


def test_metadata_that_is_not_json_is_refused_on_save(tmp_path):
    cache = Cache({}, {}, {"seed": 0, "generator": torch.Generator()})
    with pytest.raises(ValueError, match="not JSON: generator"):
        cache.save(tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []


def test_an_empty_cache_round_trips(tmp_path):
    back = Cache.load(Cache({}, {}, {"prompt": ["a"]}).save(tmp_path / "empty.safetensors"))
    assert len(back) == 0 and back.meta == {"prompt": ["a"]}
