"""python -m analyses.schedules [OUT_DIR]: run the noise-schedule study (LAB_SIZE=small | default | full)."""
import sys

from .study import main

main(sys.argv)
