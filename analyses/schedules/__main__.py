"""python -m analyses.schedules [OUT_DIR]: run the noise-schedule study (LAB_SIZE=small | default | full) and print
its section."""
from analyses.run_all import run_one

from .study import run

run_one(run)
