#!/usr/bin/env bash
# How `shapes` went on training on the 2-core CPU machine after lab/world/train_cpu.sh (its second CPU session):
#   bash lab/world/train_cpu_continue.sh RUN_DIR [UNET_MINUTES] [DECODER_MINUTES]
# RUN_DIR is the run of train_cpu.sh (latents.pt, vae.ckpt, and unet-sd/ or, from before accelerate,
# unet-sd.ckpt): the UNet resumes from its checkpoint, optimiser and EMA included. Two steps:
# 1. The VAE decoder is fine-tuned on one core with the encoder frozen, so the latents, and the UNet trained on them,
#    stay valid (the GPU-trained decoder turned orange into yellow on grey and rounded small shapes).
# 2. The UNet and text encoder train data-parallel, one process per core, 32 samples each per step.
# The export goes to RUN_DIR/shapes; copy its unet/, text_encoder/ and vae/ into lab/models/shapes after looking at
# it (and vae/ into lab/models/shapes-zsnr, which shares the VAE).
set -euo pipefail
run=$1; unet_minutes=${2:-120}; decoder_minutes=${3:-40}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train=(python3 -m lab.world.train)
mkdir -p "$run/decoder"
taskset -c 0 "${train[@]}" vae --run "$run/decoder" --init lab/models/shapes --scenes 20000 --workers 1 --batch 32 \
  --lr 2e-4 --minutes "$decoder_minutes" --checkpoint-every 120 > "$run/decoder.log" 2>&1
[ -f "$run/vae-before-decoder.ckpt" ] || cp "$run/vae.ckpt" "$run/vae-before-decoder.ckpt"
cp "$run/decoder/vae.ckpt" "$run/vae.ckpt"   # export reads the VAE from here
"${train[@]}" unet --run "$run" --variant sd --batch 32 --lr 3e-4 --ema 0.999 --minutes "$unet_minutes" \
  --checkpoint-every 180 --processes 2 > "$run/sd-continue.log" 2>&1
"${train[@]}" export --run "$run" --variant sd --out "$run/shapes"
rm -rf "$run/shapes/tokenizer" && cp -r lab/models/shapes/tokenizer "$run/shapes/tokenizer"   # the shipped vocab.json/merges.txt
