"""python -m analyses.svd [OUT_DIR]: run the latent-SVD study (LAB_SIZE=small | default | full) and print its
section."""
from analyses.run_all import run_one

from .study import run

run_one(run)
