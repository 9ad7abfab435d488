"""Progress bars for the loops a person waits for: tqdm.auto, a widget in Jupyter and a text bar in a terminal.

    >>> from lab.progress import progress
    >>> for scene in progress(scenes, "quality: generating"):     # doctest: +SKIP
    ...     ...

A bar shows its count, the elapsed time and the estimated time left, and disappears when its loop ends (leave=False)
unless asked to stay. LAB_PROGRESS=0 turns every bar off (the test suite does).
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def enabled() -> bool:
    """False when LAB_PROGRESS=0."""
    return os.environ.get("LAB_PROGRESS", "1") != "0"


def progress(iterable=None, desc: str | None = None, total: int | None = None, leave: bool = False,
             disable: bool = False, **kwargs):
    """tqdm.auto.tqdm(iterable, desc=desc, total=total, leave=leave, ...), off when LAB_PROGRESS=0 or disable."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable or not enabled(), dynamic_ncols=True,
                **kwargs)
