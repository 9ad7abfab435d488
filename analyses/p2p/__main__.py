"""python -m analyses.p2p [OUT_DIR]: run the prompt-to-prompt study (LAB_SIZE=small | default | full)."""
from analyses.run_all import run_one

from .study import run

run_one(run)
