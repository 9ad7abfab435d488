#!/usr/bin/env bash
# How `shapes` was refined on one lent GPU after its CPU sessions (session 6 of the project):
#   bash lab/world/train_gpu_refine.sh RUN_DIR OUT_DIR [TOTAL_SECONDS] [SCENES] [VARIANT]
# The UNet and text encoder start from the shipped weights (lab/models/shapes, fresh optimiser) and train on
# far more scenes than the CPU could encode (400,000 against 20,000), at batch 512, with the learning rate
# falling along a cosine from 3e-4 to 1e-5. The VAE is unchanged, so are the latents' meaning and scale.
# At every checkpoint (45 s) the EMA weights are written to OUT_DIR/unet and OUT_DIR/text_encoder: what to copy into
# lab/models/shapes after evaluating them (python -m analyses.quality_study). VARIANT zsnr refines
# lab/models/shapes-zsnr the same way.
set -euo pipefail
run=$1; out=$2; total=${3:-540}; scenes=${4:-400000}; variant=${5:-sd}
model=lab/models/$([ "$variant" = sd ] && echo shapes || echo shapes-zsnr)
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
start=$(date +%s)
python3 -m lab.world.train latents --run "$run" --init "$model" --scenes "$scenes" --workers "$workers"
left=$(( total - ($(date +%s) - start) - 45 ))   # what is left for the UNet, less loading and the last save
minutes=$(python3 -c "print(max(0.5, $left / 60))")
echo "latents: $(( $(date +%s) - start )) s; UNet minutes: $minutes"
python3 -m lab.world.train unet --run "$run" --variant "$variant" --init "$model" --batch 512 --lr 3e-4 \
  --lr-final 1e-5 --ema 0.9995 --minutes "$minutes" --checkpoint-every 45 --ema-out "$out"
cp "$run/log.jsonl" "$out/log.jsonl"
echo "total: $(( $(date +%s) - start )) s"
