"""The page inspection the notebook tests rely on finds what a person would see as broken (conftest.HELPERS)."""
from __future__ import annotations

BROKEN = {  # cell index -> (code, what the inspection must say about it)
    0: ("import ipywidgets as W\nfrom IPython.display import HTML, display\nfrom traitlets import Unicode\n\n"
        "class NoView(W.DOMWidget):\n    _view_name = Unicode('NoSuchView').tag(sync=True)\n"
        "    _view_module = Unicode('@jupyter-widgets/controls').tag(sync=True)\n"
        "    _view_module_version = Unicode('2.0.0').tag(sync=True)\n\nNoView()", "widget not rendered"),
    1: ("W.IntSlider(description='fine')", None),
    2: ("from matplotlib.figure import Figure\nFigure()", "a repr instead of a widget or figure: <Figure size"),
    3: ("out = W.Output()\ndisplay(out)\nwith out:\n    1 / 0", "stderr"),
    4: ("print(W.HBox([W.Button()]))", "a repr instead of a widget or figure: HBox(children="),
    5: ("display(HTML('<img src=\"data:image/png;base64,AAAA\">'))", "image not shown"),
}


def test_inspection_reports_each_broken_output(write_notebook, notebook):
    write_notebook("broken.ipynb", [code for code, _ in BROKEN.values()])
    nb = notebook("broken.ipynb")
    nb.run_all()
    problems = nb.inspect(timeout=3)["problems"]
    for i, (_, expected) in BROKEN.items():
        mine = [p for p in problems if p.startswith(f"cell {i}:")]
        if expected is None:
            assert not mine, mine
        else:
            assert any(expected in p for p in mine), f"cell {i}: expected {expected!r} among {problems}"


def test_kernel_is_this_python_with_the_small_offline_environment(write_notebook, notebook):
    import sys
    write_notebook("kernel.ipynb", ["import os, sys\n"
                                    "print(sys.prefix, os.environ['LAB_SIZE'], os.environ['HF_HUB_OFFLINE'])"])
    nb = notebook("kernel.ipynb")
    nb.run_all()
    printed = nb.root.locator('[data-mime-type="application/vnd.jupyter.stdout"]').inner_text().split()
    assert printed == [sys.prefix, "small", "1"]  # the kernel runs in this Python's environment (the .venv)
