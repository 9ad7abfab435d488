"""The UNet stage's checkpoint: a folder written by ``Accelerator.save_state``, and the single file it replaced.

    <run>/unet-<variant>/                 what save() writes (atomically: a .partial folder, then renamed)
        state.json                        {"step", "variant", "world", "scaling_factor", "text_encoder"}
        unet/  ema_unet/                  diffusers folders (config.json + safetensors): the trained and EMA weights
        text_encoder/  ema_text_encoder/  world 1's jointly trained CLIP text encoder and its EMA (not on world 2,
                                          whose frozen encoder is the folder state.json's text_encoder names)
        optimizer.bin                     AdamW's state (accelerate)
        random_states_<process>.pkl       each process's RNG states (accelerate)

    <run>/unet-<variant>.ckpt             the format before accelerate: one torch.save dict of unet, opt, ema_unet,
                                          step, variant, world, scaling_factor and text + ema_text (world 1) or
                                          text_encoder (a folder path, world 2). Read when no folder exists and
                                          left in place; the next save writes the folder, which wins from then on.

``find(run, variant)``: the folder or the old file to resume from (None for a new run); ``meta(found)``: its
state.json fields, from either format; ``legacy(found)``: the old file's dict; ``register(accelerator, models)``
makes ``accelerator.save_state`` / ``load_state`` write and read ``models`` ({folder name: unwrapped module}) as
the folders above; ``save(accelerator, run, variant, meta)`` writes a checkpoint from every process;
``ema_models(found)``: (EMA UNet, text encoder) as ``export`` ships them.

The models are diffusers / transformers folders rather than accelerate's ``model.safetensors``: their keys are the
same for any number of processes (a DDP model's own state_dict prefixes ``module.``), so a run checkpointed on two
CPU processes resumes on one GPU, and ``ema_unet/`` loads with ``UNet2DConditionModel.from_pretrained``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

META = ("step", "variant", "world", "scaling_factor", "text_encoder")


def folder(run: Path, variant: str) -> Path:
    return Path(run) / f"unet-{variant}"


def legacy_file(run: Path, variant: str) -> Path:
    return Path(run) / f"unet-{variant}.ckpt"


def find(run: Path, variant: str) -> Path | None:
    """The checkpoint to resume from: the folder; its previous version if a save was killed between its two
    renames; else the old single file; None for a new run."""
    final = folder(run, variant)
    for path in (final, final.with_name(final.name + ".old")):
        if (path / "state.json").exists():
            return path
    old = legacy_file(run, variant)
    return old if old.exists() else None


def is_legacy(found: Path) -> bool:
    return found.is_file()


def legacy(found: Path, device: torch.device | str = "cpu") -> dict:
    """The old single-file checkpoint's dict (what ``torch.save`` wrote before accelerate)."""
    return torch.load(found, map_location=device)


def meta(found: Path, old: dict | None = None) -> dict:
    """{step, variant, world, scaling_factor, text_encoder (a folder or None)} of either format."""
    if not is_legacy(found):
        return json.loads((found / "state.json").read_text())
    s = old if old is not None else legacy(found)
    return dict(step=s["step"], variant=s.get("variant", "sd"), world=s.get("world", 1),
                scaling_factor=s["scaling_factor"], text_encoder=s.get("text_encoder"))


def register(accelerator, models: dict) -> None:
    """Make ``accelerator.save_state`` write each of ``models`` ({name: unwrapped module}) as a ``save_pretrained``
    folder <dir>/<name> (on the main process) instead of accelerate's ``model*.safetensors``, and ``load_state``
    read them back on every process; the optimizer and RNG states stay accelerate's."""

    def save_models(_wrapped: list, weights: list, out: str) -> None:
        weights.clear()  # accelerate writes no model file of its own
        if accelerator.is_main_process:
            for name, model in models.items():
                model.save_pretrained(str(Path(out) / name))

    def load_models(wrapped: list, source: str) -> None:
        wrapped.clear()  # accelerate reads no model file of its own
        for name, model in models.items():
            model.load_state_dict(type(model).from_pretrained(str(Path(source) / name)).state_dict())

    accelerator.register_save_state_pre_hook(save_models)
    accelerator.register_load_state_pre_hook(load_models)


def save(accelerator, run: Path, variant: str, fields: dict) -> Path:
    """``accelerator.save_state`` into <run>/unet-<variant>.partial, then (main process) rename it into place, the
    previous checkpoint kept as .old until the new one is there. Every process must call it."""
    missing = [k for k in META if k not in fields]
    if missing:
        raise ValueError(f"checkpoint fields {missing} missing; it needs {', '.join(META)}")
    final = folder(run, variant)
    partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "state.json").write_text(json.dumps({k: fields[k] for k in META}, indent=1))
    accelerator.wait_for_everyone()  # every process's random states are in
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def ema_models(found: Path):
    """(EMA UNet, text encoder: world 1's EMA or world 2's frozen one), float32 on the CPU, from either format."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    if not is_legacy(found):
        text = found / "ema_text_encoder"
        if not text.exists():
            text = Path(meta(found)["text_encoder"])
        return UNet2DConditionModel.from_pretrained(str(found / "ema_unet")), CLIPTextModel.from_pretrained(str(text))
    from transformers import CLIPTextConfig
    from .train import text_config, unet_config
    s = legacy(found)
    unet = UNet2DConditionModel(**unet_config(s.get("world", 1)))
    unet.load_state_dict(s["ema_unet"])
    if "ema_text" in s:
        text = CLIPTextModel(CLIPTextConfig(**text_config()))
        text.load_state_dict(s["ema_text"])
    else:
        text = CLIPTextModel.from_pretrained(s["text_encoder"])
    return unet, text
