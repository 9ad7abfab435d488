"""python -m analyses.svd [OUT_DIR]: run the latent-SVD study (LAB_SIZE=small | default | full)."""
import sys

from .study import main

main(sys.argv)
