"""Which world a pipeline was trained on: ``"world"`` in its folder's training.json (1 when there is none).

    >>> import lab
    >>> from lab.world import world_of
    >>> world_of(lab.load("shapes"))        # doctest: +SKIP
    1
    >>> world_of("shapes")                  # a built-in name or a local folder works too
    1

Everything that scores a model on the shapes world (``lab.world.quality``, the studies) draws its scenes and reads
its images in this world unless told otherwise. A pipeline loaded from anywhere else (a hub model) is world 1's
reader's business; it has no training.json, so it gets 1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .scenes import WORLDS


def world_of(pipe_or_path) -> int:
    """1 or 2: the world of the model in ``pipe_or_path`` (a pipeline, a built-in name or a folder)."""
    folder = _folder(pipe_or_path)
    meta = folder / "training.json" if folder is not None else None
    if meta is None or not meta.is_file():
        return 1
    world = json.loads(meta.read_text()).get("world", 1)
    if world not in WORLDS:
        raise ValueError(f"{meta} says world={world!r}; worlds: {', '.join(map(str, WORLDS))}")
    return world


def _folder(pipe_or_path) -> Path | None:
    """The pipeline's folder: its own name_or_path, else the parent of its denoiser's (a pipeline rebuilt from
    parts, such as ``lab.load.with_random_unet``'s, keeps only the parts' paths)."""
    if isinstance(pipe_or_path, (str, os.PathLike)):
        from ..load import BUILTIN
        name = str(pipe_or_path)
        return BUILTIN[name] if name in BUILTIN else Path(name).expanduser()
    candidates = [getattr(pipe_or_path, "name_or_path", None)]
    for part in ("unet", "transformer"):
        config = getattr(getattr(pipe_or_path, part, None), "config", None)
        if config is not None and config.get("_name_or_path"):
            candidates.append(Path(config["_name_or_path"]).parent)
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None
