"""python -m analyses.daam [out]: run the DAAM study (see analyses.daam.study)."""
import sys
from pathlib import Path

from .study import run

print(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("figures")))
