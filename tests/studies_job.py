"""Split studies at a tiny size (classify, quality), for tests/test_parallel.py to run in one process or under
accelerate launch; it also prints what run_items(..., everywhere=True) gave this process:

    python tests/studies_job.py OUT
    accelerate launch --multi_gpu --num_processes 2 tests/studies_job.py OUT   # gloo on a machine without a GPU
"""
import sys
from pathlib import Path

from analyses import quality_study
from analyses.classify.study import config, run
from lab import parallel

out = Path(sys.argv[1])
sections = [run(out, config=config(n=2, timesteps=2)),
            quality_study.run(out, config=quality_study.config(samples=1, n=2, steps=2))]  # 3 batches, one a group
squares = parallel.run_items("squares", [1, 2, 3], lambda x: x * x, out, everywhere=True)
s = parallel.state()
print(f"process {s.process_index} of {s.num_processes}: squares {squares}", flush=True)
print("\n".join(sections), flush=True)
