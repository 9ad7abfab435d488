#!/usr/bin/env bash
# How the shipped models were continued on a CPU: both variants from the same GPU-trained weights, for the same
# number of steps on the same latents, one after the other on one pinned core (the other core stays free).
#   bash lab/world/train_cpu.sh RUN_DIR INIT_MODEL_DIR [STEPS]
# RUN_DIR must already hold latents.pt and vae.ckpt from:
#   python -m lab.world.train latents --run RUN_DIR --init INIT_MODEL_DIR --scenes 20000 --workers 1
# Exports go to RUN_DIR/shapes and RUN_DIR/shapes-zsnr; copy them into lab/models/ after looking at them.
set -euo pipefail
run=$1; init=$2; steps=${3:-4000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train=(taskset -c 0 python3 -m lab.world.train)
for variant in sd zsnr; do
  "${train[@]}" unet --run "$run" --variant "$variant" --init "$init" --steps "$steps" --minutes 600 \
    --batch 32 --lr 3e-4 --ema 0.999 --checkpoint-every 300 > "$run/$variant.log" 2>&1
  out="$run/shapes$([ "$variant" = sd ] || echo -zsnr)"
  "${train[@]}" export --run "$run" --variant "$variant" --out "$out"
  rm -rf "$out/tokenizer" && cp -r "$init/tokenizer" "$out/tokenizer"   # the shipped vocab.json/merges.txt
done
