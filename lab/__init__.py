"""Diffusion Lab: see what happens inside a Stable Diffusion model.

    >>> import lab
    >>> pipe = lab.load("shapes")                      # the built-in model; or a folder / hub id of SD 1.x, 2.x, XL
    >>> names = lab.hooks.select(pipe.unet, kind="attn2")
    >>> with lab.hooks.trace(pipe, names) as tr:       # doctest: +SKIP
    ...     image = pipe("a red circle on a black background").images[0]
    >>> tr.cache                                       # doctest: +SKIP

Modules: ``lab.load`` (models), ``lab.hooks`` (named points, capture, intervention, caches), ``lab.world`` (the
shapes world and its parser).
"""
from . import world
from .load import BUILTIN, load

__version__ = "0.1.0"
__all__ = ["load", "BUILTIN", "world", "hooks", "__version__"]


def __getattr__(name):  # lab.hooks imports diffusers; load it on first use
    if name == "hooks":
        import importlib
        return importlib.import_module(".hooks", __name__)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
