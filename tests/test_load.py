"""lab.load: the built-in model offline, determinism, the CLIP tokenizer, and clear errors."""
import json

import numpy as np
import pytest
import torch

import lab
from lab.world.train import tokenizer as shipped_tokenizer


def test_builtin_model_is_a_plain_diffusers_pipeline(shapes_pipe):
    from diffusers import StableDiffusionPipeline
    assert type(shapes_pipe) is StableDiffusionPipeline
    assert shapes_pipe.unet.dtype == torch.float32


def test_builtin_model_generates_the_same_image_twice_for_one_seed(shapes_pipe):
    def once():
        g = torch.Generator().manual_seed(5)
        return shapes_pipe("a small red circle on a black background", num_inference_steps=4, generator=g,
                           output_type="np").images
    a, b = once(), once()
    assert a.shape == (1, 128, 128, 3)
    assert np.array_equal(a, b)


def test_tokenizer_gives_clip_ids():
    ids = shipped_tokenizer()("a photo of a red cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 736, 2368, 49407]


def test_shipped_weights_are_at_most_30_mb():
    size = sum(p.stat().st_size for p in lab.BUILTIN["shapes"].rglob("*.safetensors"))
    assert size <= 30 * 2**20


def test_zero_terminal_snr_twin_differs_only_in_its_recipe(shapes_pipe):
    from analyses.schedules import schedule_of
    zsnr = lab.load("shapes-zsnr")
    config = zsnr.scheduler.config
    assert (config.prediction_type, config.timestep_spacing, config.rescale_betas_zero_snr) == (
        "v_prediction", "trailing", True)
    assert schedule_of(zsnr.scheduler).terminal_snr == 0.0
    def arch(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}
    assert arch(zsnr.unet.config) == arch(shapes_pipe.unet.config)
    for a, b in zip(zsnr.vae.parameters(), shapes_pipe.vae.parameters()):  # one VAE, so one latent space
        assert torch.equal(a, b)
    assert not torch.equal(zsnr.unet.conv_in.weight, shapes_pipe.unet.conv_in.weight)


def test_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a local folder.*Hugging Face cache"):
        lab.load("no-such-org/no-such-model")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        lab.load(tmp_path)


def test_unsupported_pipeline_class_names_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    with pytest.raises(ValueError, match="DiTPipeline.*StableDiffusionPipeline.*StableDiffusionXLPipeline"):
        lab.load(tmp_path)


def test_with_random_unet_changes_only_the_unet(shapes_pipe):
    from lab.load import with_random_unet
    before = shapes_pipe.unet.conv_in.weight.clone()
    other = with_random_unet(shapes_pipe, seed=0)
    assert other.unet is not shapes_pipe.unet and other.vae is shapes_pipe.vae
    a = dict(shapes_pipe.unet.named_parameters())
    b = dict(other.unet.named_parameters())
    assert not torch.equal(a["conv_in.weight"], b["conv_in.weight"])
    assert torch.equal(shapes_pipe.unet.conv_in.weight, before)  # the user's pipeline is untouched


def test_importing_the_lab_then_diffusers_prints_no_torchvision_notice():
    """transformers' PIL-fallback notice is noise here (the lab uses no image processor); other output stays."""
    import subprocess
    import sys
    code = "import lab, diffusers; from diffusers import StableDiffusionPipeline; print('imported')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "imported" in out.stdout
    assert "torchvision" not in out.stderr + out.stdout
