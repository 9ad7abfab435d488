"""What every notebook widget of the lab shares: setting controls by name, and a figure as PNG bytes for a picture.

    set_controls(self.w, {"scale": 3.0})        # ValueError naming the valid controls for an unknown one
    self.picture.value = png(fig)               # ipywidgets.Image takes the bytes
"""
from __future__ import annotations

import io
from typing import Mapping


def set_controls(controls: Mapping, values: Mapping) -> None:
    """Set each widget in `controls` (name -> widget) named in `values` to its value; unknown names are refused."""
    bad = [k for k in values if k not in controls]
    if bad:
        raise ValueError(f"unknown control {bad[0]!r}; controls: {', '.join(controls)}")
    for key, value in values.items():
        controls[key].value = value


def png(fig, dpi: int = 90) -> bytes:
    """The PNG bytes of a matplotlib Figure (what an ipywidgets.Image shows)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
