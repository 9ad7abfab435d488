#!/usr/bin/env bash
# How the shipped models were first trained (session 1): one GPU, one fixed time budget, both variants side by side.
# (They went on with lab/world/train_cpu.sh, train_cpu_continue.sh and train_gpu_refine.sh; see the model cards.)
#   bash lab/world/train_gpu.sh RUN_DIR EXPORT_DIR [TOTAL_SECONDS]
# Stage 1 renders the scenes and trains the VAE; stage 2 trains the SD-recipe UNet and the zero-terminal-SNR
# v-prediction UNet at once, sharing the GPU, on the same latents for the same time; stage 3 exports both.
set -euo pipefail
run=$1; out=$2; total=${3:-520}
start=$(date +%s)
python3 -m lab.world.train vae --run "$run" --scenes 100000 --minutes 1.5 --batch 64 --workers 14 --checkpoint-every 60
left=$(( total - ($(date +%s) - start) - 50 ))
minutes=$(python3 -c "print(max(0.5, $left / 60))")
echo "unet minutes: $minutes"
python3 -m lab.world.train unet --run "$run" --variant sd --minutes "$minutes" --batch 512 --lr 1e-3 --checkpoint-every 60 > "$run/sd.log" 2>&1 &
python3 -m lab.world.train unet --run "$run" --variant zsnr --minutes "$minutes" --batch 512 --lr 1e-3 --checkpoint-every 60 > "$run/zsnr.log" 2>&1 &
wait
tail -n 3 "$run/sd.log" "$run/zsnr.log"
python3 -m lab.world.train export --run "$run" --out "$out/shapes"
python3 -m lab.world.train export --run "$run" --variant zsnr --out "$out/shapes-zsnr"
echo "total seconds: $(( $(date +%s) - start ))"
