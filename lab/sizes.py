"""One knob for how big studies and notebooks run: ``LAB_SIZE`` = small (tests) | default | full.

    >>> from lab.sizes import pick
    >>> n_images = pick(small=8, default=200, full=1000)
"""
from __future__ import annotations

import os

SIZES = ("small", "default", "full")


def size() -> str:
    value = os.environ.get("LAB_SIZE", "small" if os.environ.get("LAB_SMALL") == "1" else "default")
    if value not in SIZES:
        raise ValueError(f"LAB_SIZE={value!r}; use one of {', '.join(SIZES)}")
    return value


def pick(small, default, full):
    """The value for the current size."""
    return {"small": small, "default": default, "full": full}[size()]
