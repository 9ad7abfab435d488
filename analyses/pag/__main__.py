"""python -m analyses.pag [OUT_DIR]: run the perturbed-attention guidance study (LAB_SIZE=small | default | full)."""
from analyses.run_all import run_one

from .study import run

run_one(run)
