"""Cache: captured tensors by full point name, with named axes and metadata; saved as safetensors, analysable alone.

    cache = tr.cache
    cache["mid_block.attentions.0.transformer_blocks.0.attn2"]   # torch.Tensor
    cache.axes["mid_block.attentions.0.transformer_blocks.0.attn2"]
    # -> ("step", "branch", "batch", "head", "query", "key")
    cache.meta["prompt"], cache.meta["timesteps"], cache.resolution(name)   # (h, w): queries are h*w
    cache.take(name, step=3, branch="cond", batch=0)                 # index axes by name (step by its step index)
    cache.save("run.safetensors"); Cache.load("run.safetensors")

The file is a plain safetensors file: one tensor per point, and in the header metadata one key, "lab.cache", holding
JSON {"format": 1, "axes": {...}, "meta": {...}}. It is written atomically (temp file in the same folder, fsync,
os.replace), so a crash never leaves a half-written cache under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .points import suggest

HEADER_KEY = "lab.cache"
FORMAT = 1


class Cache(Mapping):
    """Mapping from point name (full module path) to tensor, plus ``axes`` (name -> axis names) and ``meta`` (dict).

        cache = Cache({"mid_block": torch.zeros(1, 1, 4, 2, 2)},
                      {"mid_block": ("branch", "batch", "channel", "height", "width")},
                      {"resolution": {"mid_block": [2, 2]}})
        cache.resolution("mid_block")   # (2, 2)
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], axes: Mapping[str, tuple], meta: Mapping | None = None):
        self.tensors = dict(tensors)
        self.axes = {k: tuple(v) for k, v in axes.items()}
        self.meta = dict(meta or {})
        for name, t in self.tensors.items():
            if name not in self.axes:
                raise ValueError(f"tensor {name!r} has no axes; axes given for: {', '.join(self.axes) or 'none'}")
            if t.ndim != len(self.axes[name]):
                raise ValueError(f"{name!r} has {t.ndim} dims but axes {self.axes[name]}")

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in this cache; nearest: {', '.join(suggest(name, list(self.tensors)))}"
                           ) from None

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        lines = [f"Cache({len(self)} points, prompt={self.meta.get('prompt')!r})"]
        lines += [f"  {n}: {tuple(t.shape)} {self.axes[n]}" for n, t in self.tensors.items()]
        return "\n".join(lines)

    def resolution(self, name: str) -> tuple[int, int]:
        """(h, w) of the point `name`: its attention queries are the h*w positions, row-major."""
        self[name]
        return tuple(self.meta["resolution"][name])

    def take(self, name: str, **index) -> torch.Tensor:
        """The tensor of `name` indexed by axis name; those axes are dropped.

            cache.take(name, step=10, branch="cond", batch=0)   # -> (head, query, key)

        step is a step index of the run (looked up in meta["steps"]), branch a label ('cond' | 'uncond'), other
        axes take plain integers.
        """
        t, ax = self[name], list(self.axes[name])
        for axis, i in index.items():
            if axis not in ax:
                raise ValueError(f"{name!r} has no axis {axis!r}; axes: {', '.join(ax)}")
            if axis == "step":
                steps = self.meta.get("steps") or []
                if i not in steps:
                    raise ValueError(f"step {i} was not kept; kept steps: {steps}")
                i = steps.index(i)
            elif axis == "branch":
                branches = self.meta.get("branches") or []
                if i not in branches:
                    raise ValueError(f"branch {i!r} was not kept; kept branches: {', '.join(branches)}")
                i = branches.index(i)
            d = ax.index(axis)
            t = t.select(d, i)
            ax.pop(d)
        return t

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache as a safetensors file at `path`, atomically; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        try:
            header = json.dumps({"format": FORMAT, "axes": {k: list(v) for k, v in self.axes.items()},
                                 "meta": self.meta})
        except TypeError as e:
            bad = [k for k, v in self.meta.items() if not _is_json(v)]
            raise ValueError(f"cache.meta must be plain JSON data to save; not JSON: {', '.join(bad)} ({e})") from None
        tensors = {k: t.detach().to("cpu").contiguous() for k, t in self.tensors.items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={HEADER_KEY: header})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Cache":
        """Read a cache written by save(); a corrupt file or a safetensors file that is not a lab cache is an error."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no cache file at {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                header = (f.metadata() or {}).get(HEADER_KEY)
                if header is None:
                    raise _NotACache(sorted(f.keys()))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except _NotACache as e:
            raise ValueError(f"{path} is a safetensors file but not a lab cache (no {HEADER_KEY!r} header metadata; "
                             f"tensors: {', '.join(e.args[0][:5]) or 'none'})") from None
        except Exception as e:  # safetensors raises its own error types for truncated or garbled files
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        try:
            info = json.loads(header)
            fmt, axes, meta = info["format"], info["axes"], info["meta"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} has a corrupt {HEADER_KEY!r} header: {e}") from None
        if fmt > FORMAT:
            raise ValueError(f"{path} is lab cache format {fmt}; this lab reads formats up to {FORMAT}")
        if set(axes) != set(tensors):
            raise ValueError(f"{path} has tensors {sorted(tensors)} but axes for {sorted(axes)}")
        return cls({k: tensors[k] for k in axes}, axes, meta)  # the header keeps the capture order


class _NotACache(Exception):
    pass


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False
