"""python -m analyses.dift [OUT_DIR]: run the DIFT study (LAB_SIZE=small | default | full) and print its section."""
import sys
from pathlib import Path

from .study import run

print(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("figures")))
