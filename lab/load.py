"""Load a Stable Diffusion family pipeline: the built-in shapes model, a local folder, or a Hugging Face hub id.

    >>> import lab
    >>> pipe = lab.load("shapes")                                   # the built-in model, offline, on the CPU
    >>> pipe = lab.load("stabilityai/stable-diffusion-2-1-base")    # doctest: +SKIP  (from the HF cache)

``load(name_or_path, device=None, dtype=None, **kwargs)`` picks the pipeline class from the folder's
``model_index.json`` (SD 1.x / 2.x -> StableDiffusionPipeline, SDXL -> StableDiffusionXLPipeline, SD3 / SD3.5 ->
StableDiffusion3Pipeline, FLUX.1 -> FluxPipeline), loads it in
float32 on the CPU (float16 on a GPU) unless told otherwise, and leaves every other setting as diffusers made it.
A component the folder saved as absent (an SD3 pipeline without T5: ``text_encoder_3`` and ``tokenizer_3`` null in
``model_index.json``, as ``shapes-dit``) loads as None, which plain ``from_pretrained`` needs passed by hand.
``BUILTIN`` maps the names of the shipped models to their folders. ``with_random_unet(pipe, seed)`` is the
"untrained model" baseline of the sanity checks: the same pipeline with its denoiser (UNet or transformer)
re-initialised from its config;
``with_components(pipe, scheduler=...)`` is the same pipeline with other parts swapped in.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import torch

MODELS = Path(__file__).resolve().parent / "models"
BUILTIN = {"shapes": MODELS / "shapes", "shapes-zsnr": MODELS / "shapes-zsnr"}
SUPPORTED = {"StableDiffusionPipeline": "SD 1.x / 2.x", "StableDiffusionXLPipeline": "SDXL",
             "StableDiffusion3Pipeline": "SD3 / SD3.5", "FluxPipeline": "FLUX.1"}


def _pipeline_class(index: dict, where: str):
    import diffusers
    name = index.get("_class_name")
    if name not in SUPPORTED:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
        raise ValueError(f"{where} holds a {name!r}, which the lab does not support yet; supported: {supported}")
    return getattr(diffusers, name)


def _local_index(name_or_path: str) -> tuple[Path, dict] | None:
    """The folder and model_index.json for a built-in name, a local folder, or a hub id already in the HF cache."""
    if name_or_path in BUILTIN:
        folder = BUILTIN[name_or_path]
    elif Path(name_or_path).expanduser().exists():
        folder = Path(name_or_path).expanduser()
    else:
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(name_or_path, local_files_only=True,
                                            allow_patterns=["model_index.json"]))
        except Exception:  # not in the cache (or not a valid repo id): the caller reports where we looked
            return None
        return folder, json.loads((folder / "model_index.json").read_text())
    index = folder / "model_index.json"
    if not index.exists():
        raise FileNotFoundError(f"{folder} has no model_index.json: it is not a diffusers pipeline folder "
                                f"(save one with pipe.save_pretrained(folder))")
    return folder, json.loads(index.read_text())


def load(name_or_path: str | os.PathLike = "shapes", device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, **kwargs):
    """A diffusers pipeline for ``name_or_path``; ``kwargs`` go to ``from_pretrained`` unchanged."""
    name_or_path = str(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" and name_or_path not in BUILTIN else torch.float32)
    found = _local_index(name_or_path)
    if found is None:
        from huggingface_hub.constants import HF_HUB_CACHE
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if offline or not _looks_like_hub_id(name_or_path):
            raise FileNotFoundError(
                f"no model {name_or_path!r}: it is not a built-in model ({', '.join(BUILTIN)}), not a local folder, "
                f"and not in the Hugging Face cache at {HF_HUB_CACHE}. Download it on a machine with network access "
                f"(huggingface-cli download {name_or_path}) or pass the path of a saved pipeline folder.")
        pipe_cls = None  # let diffusers fetch it; it checks the class below
        source = name_or_path
    else:
        folder, index = found
        pipe_cls = _pipeline_class(index, str(folder))
        source = str(folder) if name_or_path in BUILTIN or Path(name_or_path).expanduser().exists() else name_or_path
        kwargs = {**_absent(index, pipe_cls), **kwargs}
    kwargs = {_dtype_argument(): dtype, **kwargs}
    if importlib.util.find_spec("accelerate") is None:
        kwargs.setdefault("low_cpu_mem_usage", False)  # what diffusers falls back to anyway, without its warning
    if pipe_cls is None:
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
        _pipeline_class({"_class_name": type(pipe).__name__}, source)
    else:
        pipe = pipe_cls.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _absent(index: dict, pipe_cls) -> dict:
    """{component: None} for the components a folder saved as absent (``[null, null]`` in model_index.json, such as
    an SD3 pipeline without T5), which diffusers otherwise refuses to load unless they are passed as None."""
    optional = set(getattr(pipe_cls, "_optional_components", []))
    return {name: None for name, value in index.items()
            if not name.startswith("_") and value == [None, None] and name not in optional}


@functools.cache
def _dtype_argument() -> str:
    """``dtype`` where diffusers reads it (newer releases, which deprecate ``torch_dtype``), else ``torch_dtype``."""
    import inspect

    from diffusers import DiffusionPipeline
    return "dtype" if 'kwargs.pop("dtype"' in inspect.getsource(DiffusionPipeline.from_pretrained) else "torch_dtype"


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def with_random_unet(pipe, seed: int = 0):
    """A new pipeline sharing every component of ``pipe`` but its denoiser (``unet``, or ``transformer`` for SD3 and
    Flux), re-initialised from the same config with ``seed`` (diffusers' default init), on the same device and dtype.
    ``pipe`` itself is not changed."""
    attr = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    old = getattr(pipe, attr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = type(old).from_config(old.config)
    new = new.to(old.device).eval()
    if new.dtype != old.dtype:  # only then: diffusers warns about any dtype cast through .to()
        new = new.to(dtype=old.dtype)
    return with_components(pipe, **{attr: new})


def with_components(pipe, **replacements):
    """A new pipeline of the same class sharing every component of ``pipe`` (nothing copied) except
    ``replacements`` (e.g. ``scheduler=...``); ``pipe`` itself is not changed."""
    parts = dict(pipe.components, **replacements)
    extra = {"requires_safety_checker": False} if "safety_checker" in parts else {}
    other = type(pipe)(**parts, **extra)
    other.set_progress_bar_config(disable=True)
    return other
