"""The code style the project holds itself to (pyproject's [tool.ruff]): no unused or undefined names, and lines of
at most 120 columns, in the packages, scripts, tests and notebooks."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    found = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                           text=True)
    assert found.returncode == 0, found.stdout + found.stderr


def test_notebooks_import_the_installed_package():
    """The package is installed (editable), so no notebook edits sys.path to find it."""
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "sys.path" not in nb.read_text(), f"{nb.name} edits sys.path"
