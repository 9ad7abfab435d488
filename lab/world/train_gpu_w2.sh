#!/usr/bin/env bash
# World 2's UNet (and, with DIT_SECONDS, its DiT) on one lent GPU, in one call of the device tool:
#   bash lab/world/train_gpu_w2.sh OUT [TOTAL_SECONDS] [SCENES]
# Before the call, here (the payload and the tree must fit the device tool's 64 MiB together):
#   .venv/bin/python scripts/gpu_pack.py && mv lab/models/shapes-zsnr /tmp/ && .venv/bin/python scripts/gpu_pack_w2.py
# The device call: command "bash lab/world/train_gpu_w2.sh $OUT 520 150000", carry [".dev"], timeout_s 600
#   (with "DIT_SECONDS=200 bash lab/world/train_gpu_w2.sh ..." the last 200 s of the 520 train the DiT);
#   then `mv /tmp/shapes-zsnr lab/models/` at once, whatever the call returned.
# What it does there: unpacks .dev/site.tar.xz (diffusers, accelerate); renders SCENES world-2 scenes (seeds
# 0..SCENES-1, runs/w2's 20,000 among them) on every core but one and encodes them with the frozen encoder of
# .dev/w2/vae.ckpt, on runs/w2's latent scale; trains the UNet from .dev/w2/init (runs/w2's EMA) on the frozen tower
# .dev/w2/text_encoder at batch 512, the learning rate falling along a cosine from 3e-4 to 1e-5, EMA 0.9995, bf16
# autocast (lab.world.loop), until TOTAL_SECONDS less DIT_SECONDS have passed; then the DiT likewise (from
# .dev/w2/dit if the pack had one). Every 45 s the EMA weights are written to OUT, float16, each file replaced whole
# (written beside it, then renamed), so a call killed at any moment leaves the last complete ones:
#   OUT/unet/{config.json, diffusion_pytorch_model.safetensors}          8.3 MiB
#   OUT/transformer/{config.json, diffusion_pytorch_model.safetensors}   10.3 MiB, with DIT_SECONDS
#   OUT/train.log (every line the stages print, their log rows included), OUT/log.jsonl (at the end)
# Rendering runs about 10-20 ms a scene on a core: 150,000 scenes on 15 workers take an estimated 100-200 s (the log
# says how long they took); the UNet gets the rest.
# Afterwards, here: a run with runs/w2's latents and VAE that starts from the returned EMA, fresh optimiser
#   mkdir runs/w2-gpu && cp runs/w2/latents.pt runs/w2/vae.ckpt runs/w2-gpu/ && cp -r <files_at>/OUT runs/w2-gpu/gpu1
#   .venv/bin/python -m lab.world.train unet --run runs/w2-gpu --init runs/w2-gpu/gpu1 \
#     --text-encoder runs/clip/export/text_encoder --batch 32 --lr 1e-4 ...       # go on on the CPU, or --steps 0:
#   .venv/bin/python -m lab.world.train export --run runs/w2-gpu --vae runs/w2-dec --out lab/models/shapes
#   (--steps 0 writes a checkpoint whose EMA is the returned weights, which export reads; export into
#   lab/models/shapes only once the quality study meets the goals.) The DiT: train_dit dit --run runs/w2-gpu
#   --init runs/w2-gpu/gpu1 ..., the same way.
# Env: PY (the Python; PY=.venv/bin/python to try it here), BATCH (512), EVERY (45 s), DIT_SECONDS (0), RUN (the
# run folder on the device, /tmp/w2-run: a second call on a warm machine reuses its latents and resumes its
# checkpoints).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1; total=${2:-520}; scenes=${3:-150000}
py=${PY:-python3}; batch=${BATCH:-512}; every=${EVERY:-45}; dit=${DIT_SECONDS:-0}; run=${RUN:-/tmp/w2-run}
pay=.dev/w2
start=$(date +%s)
mkdir -p "$out" "$run" /tmp/site
[[ -f $pay/vae.ckpt ]] || { echo "no $pay: run scripts/gpu_pack_w2.py here and carry .dev"; exit 2; }
tar -xJf .dev/site.tar.xz -C /tmp/site || { echo "no .dev/site.tar.xz: run scripts/gpu_pack.py and carry .dev"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 LAB_PROGRESS=0
log="$out/train.log"
say() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
stage() { "$py" "$@" 2>&1 | tee -a "$log"; rm -rf "$out"/*.partial; }  # no half-written folder comes back
say "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no GPU')"
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))

if [[ -f $run/latents.pt ]]; then
  say "latents: reusing $run/latents.pt"
else
  say "latents: $scenes world-2 scenes on $workers workers"
  stage -m lab.world.train latents --run "$run" --init "$pay" --world 2 --scenes "$scenes" --workers "$workers"
fi
left=$(( total - ($(date +%s) - start) - dit - 40 ))  # the UNet's share, less loading and the last save
minutes=$("$py" -c "print(max(0.5, $left / 60))")
say "UNet: $minutes minutes at batch $batch"
stage -m lab.world.train unet --run "$run" --init "$pay/init" --text-encoder "$pay/text_encoder" --batch "$batch" \
  --lr 3e-4 --lr-final 1e-5 --ema 0.9995 --minutes "$minutes" --checkpoint-every "$every" \
  --ema-out "$out" --ema-out-half

if (( dit > 0 )); then
  left=$(( total - ($(date +%s) - start) - 30 ))
  minutes=$("$py" -c "print(max(0.5, $left / 60))")
  init=(); [[ -d $pay/dit/transformer ]] && init=(--init "$pay/dit")
  say "DiT: $minutes minutes at batch $batch ${init[*]}"
  stage -m lab.world.train_dit dit --run "$run" "${init[@]}" --text-encoder "$pay/text_encoder" --batch "$batch" \
    --lr 3e-4 --lr-final 1e-5 --ema 0.9995 --minutes "$minutes" --checkpoint-every "$every" --ema-out "$out"
fi
cp "$run/log.jsonl" "$out/log.jsonl"
say "done"
