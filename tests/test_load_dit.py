"""lab.load picks StableDiffusion3Pipeline / FluxPipeline from a saved folder or the Hugging Face cache."""
import json

import pytest
import torch

from tiny_models import generate_dit, one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

import lab


@pytest.fixture(scope="module", params=["sd35m", "flux-dev"])
def saved(request, tmp_path_factory):
    pipe = tiny_dit_pipeline(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    pipe.save_pretrained(folder)
    return pipe, folder


def test_a_saved_dit_pipeline_folder_loads_as_its_class(saved):
    pipe, folder = saved
    loaded = lab.load(folder, device="cpu")
    assert type(loaded) is type(pipe)
    assert {k: v for k, v in loaded.transformer.config.items() if not k.startswith("_")} == json.loads(json.dumps(
        {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}))  # tuples come back as lists
    assert torch.equal(generate_dit(loaded, steps=1), generate_dit(pipe.to("cpu"), steps=1))


def test_a_dit_pipeline_in_the_hf_cache_loads_by_hub_id(saved, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    pipe, folder = saved
    snapshot = tmp_path / "models--tiny-org--tiny-dit" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (tmp_path / "models--tiny-org--tiny-dit" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-dit" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = lab.load("tiny-org/tiny-dit", device="cpu")
    assert type(loaded) is type(pipe)


def test_an_unsupported_dit_pipeline_names_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(ValueError, match="PixArtAlphaPipeline.*StableDiffusion3Pipeline \\(SD3 / SD3.5\\), "
                                         "FluxPipeline \\(FLUX.1\\)"):
        lab.load(tmp_path)


def test_with_random_unet_renews_a_dit_transformer_only(saved):
    from lab.load import with_random_unet

    pipe, _ = saved
    other = with_random_unet(pipe, seed=1)
    assert other.transformer is not pipe.transformer and other.vae is pipe.vae
    a, b = next(other.transformer.parameters()), next(pipe.transformer.parameters())
    assert a.shape == b.shape and not torch.equal(a, b)
