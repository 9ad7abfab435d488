"""Plot helpers shared by the analyses: saving figures safely, image display. No global matplotlib state.

    >>> from matplotlib.figure import Figure
    >>> from lab.plotting import save_figure
    >>> save_figure(Figure(), "figures/empty.png")                  # doctest: +SKIP
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a half-written PNG never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a figure is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
