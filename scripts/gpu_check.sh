#!/usr/bin/env bash
# The GPU lane: everything a lent GPU should check, in one call of the device tool of at most 8 minutes.
#   .venv/bin/python scripts/gpu_pack.py --slim   # here first: diffusers and ipywidgets for the device, .dev/ (ignored);
#                                                 # --slim: shapes-zsnr's copies of shapes' VAE and tokenizer stay here
#   device run: command "bash scripts/gpu_check.sh", carry [".dev"], timeout_s 480
#   then, here: git checkout -- lab/models/shapes-zsnr
#     (or "GPU_STEPS=3 bash scripts/gpu_check.sh": the benchmarks alone, DiTs included, in the same 480 s)
#   then copy the returned benchmarks/*.md over ours (they gain '## Measured: <model>, <GPU>, <dtype>' sections)
#   and read gpu-tests.log for the suite's result and gpu-tolerance.log for the batch differences it saw.
# The device has Python 3.12 with torch + CUDA, transformers, numpy, scipy, matplotlib, einops, safetensors and
# pytest, but no diffusers, ipywidgets or network: .dev/site.tar.xz is unpacked to /tmp/site on PYTHONPATH.
# Steps, each with its own time limit so that one slow step cannot take the others' time:
#   1. the test suite with CUDA visible (not the browser tests, the notebooks or the style check: no Chromium,
#      Jupyter or ruff there)                                                                     <= 200 s
#   2. every study at LAB_SIZE=small on CUDA (command 1's studies, smoke size)                    <= 80 s
#   3. at real size, random weights, until 450 s have passed, most wanted first (each writes its section after
#      every repeat, so one stopped by its time limit keeps the repeats it finished):
#        bench_hooks.py on SD1.5 512 px and SDXL 1024 px, fp16 (issue 18's 1.05x goal)               70 s, 100 s
#        bench_hooks.py on SD3-medium 1024 px, bf16, 28 steps, guidance 7, 3 repeats x 4 arms (plain, DAAM,
#          eager, joint @3 steps); estimated ~3 s a plain call, ~60 s with the build (issue 20, item 6)   90 s
#        bench_hooks.py on FLUX.1-dev 1024 px, bf16, 28 steps, guidance embedding 3.5, 2 repeats x 3 arms
#          (plain, DAAM, eager; no joint map: it copies 14.5 GB to the host per run); estimated 0.35-1 s a step
#          (10-28 s a call), 100-200 s with the 11.9B build and the warm-up: it may stop after one repeat  170 s
#        bench_daam.py on SDXL 1024 px (the explorer's capture), bench_hooks.py on SD2.1 768 px, bench_dift.py on
#          SD1.5 512 px, fp16                                                                    80 s, 70 s, 60 s
#        the full-size DAAM study on one GPU (bench_parallel.py --processes 1: wall time, issue 22)     120 s
#      After steps 1 and 2 (up to 280 s) about 170-270 s are left: the UNet runs come first and the DiT runs
#      get what remains; GPU_STEPS=3 runs step 3 alone, with the whole 450 s for the benchmarks (DiTs included).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
tar -xJf .dev/site.tar.xz -C /tmp/site || { echo "no .dev/site.tar.xz: run scripts/gpu_pack.py here and carry .dev"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
py=${PY:-python3}  # the device's Python (PY=.venv/bin/python to try the script here)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda visible', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/gpu-env.log"
for part in vae tokenizer; do  # gpu_pack.py --slim left shapes-zsnr's copies of these behind: they are shapes'
  mkdir -p lab/models/shapes-zsnr/$part && cp -rn lab/models/shapes/$part/. lab/models/shapes-zsnr/$part/
done
start=$(date +%s)
steps=" ${GPU_STEPS:-1 2 3} "  # which steps run: GPU_STEPS=3 for the benchmarks alone

if [[ $steps == *" 1 "* ]]; then
echo "== 1. tests with CUDA visible"
LAB_SIZE=small LAB_TOLERANCE_LOG="$OUT/gpu-tolerance.log" timeout 200 $py -m pytest -q -p no:cacheprovider tests --ignore=tests/browser \
  --ignore=tests/test_style.py -o addopts="" -rfE --durations=10 > "$OUT/gpu-tests.log" 2>&1
echo "tests: rc $? after $(( $(date +%s) - start )) s; $(tail -n 1 "$OUT/gpu-tests.log")"
fi

if [[ $steps == *" 2 "* ]]; then
echo "== 2. every study at LAB_SIZE=small on CUDA"
LAB_SIZE=small timeout 80 $py -m analyses.run_all /tmp/figures > "$OUT/gpu-studies.log" 2>&1
echo "studies: rc $? after $(( $(date +%s) - start )) s"; cp /tmp/figures/REPORT.md "$OUT/gpu-REPORT.md" 2>/dev/null
fi

if [[ $steps == *" 3 "* ]]; then
echo "== 3. benchmarks at real size, random weights, most wanted first, while the deadline allows"
deadline=$(( start + 450 ))
bench() {  # [DTYPE=bf16] bench SECONDS SCRIPT ARGS...: run it (in DTYPE, else fp16) if SECONDS fit before the deadline
  local need=$1; shift
  if (( $(date +%s) + need > deadline )); then echo "skipped (no time left): $*"; return; fi
  timeout "$need" $py "$@" --device cuda --dtype "${DTYPE:-fp16}" 2>&1 | tail -n 12
}
bench 70 benchmarks/bench_hooks.py --model sd15-full --repeats 3 --section benchmarks/hooks.md
bench 100 benchmarks/bench_hooks.py --model sdxl-full --repeats 3 --section benchmarks/hooks.md
DTYPE=bf16 bench 90 benchmarks/bench_hooks.py --model sd3-full --repeats 3 --section benchmarks/hooks.md
DTYPE=bf16 bench 170 benchmarks/bench_hooks.py --model flux-full --repeats 2 --arms daam,eager \
  --section benchmarks/hooks.md
bench 80 benchmarks/bench_daam.py --model sdxl-full --repeats 3 --section benchmarks/daam.md
bench 70 benchmarks/bench_hooks.py --model sd21-full --repeats 3 --section benchmarks/hooks.md
bench 60 benchmarks/bench_dift.py --model sd15-full --repeats 5 --section benchmarks/dift.md
if (( $(date +%s) + 120 <= deadline )); then  # the study on one GPU: its own flags, not bench()'s --device/--dtype
  timeout 120 $py benchmarks/bench_parallel.py --study daam --size full --processes 1 2>&1 | tail -n 8
else echo "skipped (no time left): bench_parallel.py --study daam --size full --processes 1"; fi
cp benchmarks/hooks.md benchmarks/daam.md benchmarks/dift.md benchmarks/parallel.md "$OUT/"
fi
echo "total: $(( $(date +%s) - start )) s"
