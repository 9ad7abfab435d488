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
import logging

from . import world
from .load import BUILTIN, load


class _QuietTorchvisionFallback(logging.Filter):
    """transformers 5 announces, on importing diffusers, that its image processors fall back to PIL without
    torchvision. The lab never uses them (and torchvision is not installed on purpose), so drop that one notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_QuietTorchvisionFallback())

__version__ = "0.1.0"
__all__ = ["load", "BUILTIN", "world", "hooks", "__version__"]


def __getattr__(name):  # lab.hooks imports diffusers; load it on first use
    if name == "hooks":
        import importlib
        return importlib.import_module(".hooks", __name__)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
