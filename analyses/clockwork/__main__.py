"""python -m analyses.clockwork [OUT_DIR]: run the layer sensitivity and feature reuse study (LAB_SIZE=...)."""
from analyses.run_all import run_one

from .study import run

run_one(run)
