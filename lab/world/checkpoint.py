"""A training stage's checkpoint: a folder written by ``Accelerator.save_state``, and the single file it replaced.

    <run>/<name>/                         what save() writes (atomically: a .partial folder, then renamed)
        state.json                        the stage's plain fields: step, and what it needs to resume and export
        <model>/  ...                     diffusers / transformers folders (config.json + safetensors), one per
                                          module the stage registers: the trained weights and their EMA
        optimizer.bin                     AdamW's state (accelerate)
        random_states_<process>.pkl       each process's RNG states (accelerate)

    <run>/<name>.ckpt                     the format before accelerate: one torch.save dict of the weights, the
                                          optimiser and the same fields. Read when no folder exists and left in
                                          place; the next save writes the folder, which wins from then on.

The two stages that use it:

    unet-<variant>/  (lab.world.train)    state.json {step, variant, world, scaling_factor, text_encoder};
                                          unet/ ema_unet/, and world 1's jointly trained text_encoder/
                                          ema_text_encoder/ (world 2's frozen encoder is state.json's text_encoder)
    dit/  (lab.world.train_dit)           state.json {step, text_encoder, world, scaling_factor, sessions};
                                          transformer/ ema_transformer/ (SD3Transformer2DModel)

``find(path)``: the folder or the old file to resume from (None for a new run); ``meta(found, fields)``: its
state.json fields, from either format (``fields`` gives the defaults an old file may lack); ``legacy(found)``: the
old file's dict; ``register(accelerator, models)`` makes ``accelerator.save_state`` / ``load_state`` write and read
``models`` ({folder name: unwrapped module}) as the folders above; ``load(accelerator, found)`` resumes from a
folder and ``save(accelerator, path, fields)`` writes one, from every process.

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


def legacy_file(path: Path) -> Path:
    """The single file of the format before accelerate: <run>/<name>.ckpt beside the folder <run>/<name>."""
    path = Path(path)
    return path.with_name(path.name + ".ckpt")


def find(path: Path) -> Path | None:
    """The checkpoint to resume from: the folder; its previous version if a save was killed between its two
    renames; else the old single file; None for a new run."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    old = legacy_file(path)
    return old if old.exists() else None


def is_legacy(found: Path) -> bool:
    return found.is_file()


def legacy(found: Path, device: torch.device | str = "cpu") -> dict:
    """The old single-file checkpoint's dict (what ``torch.save`` wrote before accelerate)."""
    return torch.load(found, map_location=device)


def meta(found: Path, fields: dict, old: dict | None = None) -> dict:
    """The checkpoint's state.json; of an old file, its entries named in `fields` ({name: the value when the file
    has none})."""
    if not is_legacy(found):
        return json.loads((found / "state.json").read_text())
    s = old if old is not None else legacy(found)
    return {k: s.get(k, default) for k, default in fields.items()}


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


def load(accelerator, found: Path) -> dict:
    """Resume from a checkpoint folder on every process: the registered models, the optimiser's and the RNG states;
    returns state.json."""
    accelerator.load_state(str(found))
    accelerator.step = 0  # micro-batches count from 0 again: --accumulate may have changed
    return json.loads((found / "state.json").read_text())


def save(accelerator, path: Path, fields: dict) -> Path:
    """``accelerator.save_state`` into <path>.partial with `fields` as its state.json, then (main process) rename it
    to `path`, the previous checkpoint kept as .old until the new one is there. Every process must call it."""
    if "step" not in fields:
        raise ValueError(f"checkpoint fields {sorted(fields)} lack 'step'")
    final = Path(path)
    partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "state.json").write_text(json.dumps(fields, indent=1))
    accelerator.wait_for_everyone()  # every process's random states are in
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
