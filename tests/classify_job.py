"""The classify study at a tiny size, for tests/test_parallel.py to run in one process or under accelerate launch:

    python tests/classify_job.py OUT
    accelerate launch --multi_gpu --num_processes 2 tests/classify_job.py OUT   # gloo on a machine without a GPU
"""
import sys
from pathlib import Path

from analyses.classify.study import config, run
from lab import parallel

section = run(Path(sys.argv[1]), config=config(n=2, timesteps=2))
print(f"process {parallel.state().process_index} of {parallel.state().num_processes}", flush=True)
print(section, flush=True)
