#!/usr/bin/env bash
# The long tokenizer run of the demo (issue "the demo that shows SpectralAR works"): TiTok's two-stage recipe on
# Fashion-MNIST 32x32, trained in resumable segments so that every segment end leaves a saved (EMA) tokenizer for the
# rFID / PSNR curve against training images seen (benchmarks/RESULTS.md, "The demo tokenizer's long run").
#
#   0. teacher: examples/train_vqgan.py --preset fmnist-f4 (8 x 8 grid of 512 codes), L2 + VQ + LPIPS-Alex 0.5
#   1. stage 1: 32 spectral tokens, 4096 x 8 codebook, proxy-code cross-entropy against the teacher's codes of the
#      nested targets (+ VQ); the teacher's decoder frozen inside the tokenizer
#   2. stage 2: encoder and codebook frozen; ViT decoder + pixel decoder with L2 + LPIPS-Alex 0.5 + a hinge GAN under
#      VQGAN's adaptive weight (+ LeCAM), as the shipped demo's decoder fine-tune
#   3. pretokenize.py --flip with the final tokenizer (120,000 code sequences)
#   4. the generator (preset small) in segments, each leaving a pipeline for the gFID curve
#
# Learning rates are constant after warm-up, so that training in segments is the same run as one uninterrupted run
# (resumes are exact). Every command resumes from its latest checkpoint: rerun this script to continue a stopped run.
#
# Needs: apt-get install dataset-fashion-mnist; RUNS/lpips_alex.safetensors (examples/demo_fashion_mnist.sh, step 0).
# Usage: bash benchmarks/demo_tokenizer_run.sh RUNS     (env: STAGE1_STEPS, STAGE1_SEGMENT, STAGE2_STEPS,
#        STAGE2_SEGMENT, GENERATOR_STEPS, GENERATOR_SEGMENT, TEACHER_STEPS)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: demo_tokenizer_run.sh RUNS}
TEACHER_STEPS=${TEACHER_STEPS:-3000}
STAGE1_STEPS=${STAGE1_STEPS:-24000}
STAGE1_SEGMENT=${STAGE1_SEGMENT:-4000}
STAGE2_STEPS=${STAGE2_STEPS:-6000}
STAGE2_SEGMENT=${STAGE2_SEGMENT:-1000}
GENERATOR_STEPS=${GENERATOR_STEPS:-12000}
GENERATOR_SEGMENT=${GENERATOR_SEGMENT:-3000}
# checkpoints about every 15-20 minutes on one CPU core (stage 1 ~0.5 s/step, stage 2 ~2 s/step, generator ~2.4 s/step)
declare -A CHECKPOINT_STEPS=([stage1]=2000 [stage2]=500 [generator]=500)
DATA=/usr/share/datasets/fashion-mnist
LPIPS="$RUNS/lpips_alex.safetensors"
for stage in STAGE1 STAGE2 GENERATOR; do
    steps=${stage}_STEPS segment=${stage}_SEGMENT
    if (( ${!steps} % ${!segment} )); then
        echo "demo_tokenizer_run.sh: error: ${steps}=${!steps} is not a multiple of ${segment}=${!segment}" >&2; exit 2
    fi
done
PIXEL='"pixel_decoder": {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 32, "codebook_size": 512}'
SIZES='"num_latent_tokens": 32, "codebook_size": 4096'
COMMON=(--idx_data_dir "$DATA" --train_batch_size 32 --lr_scheduler constant_with_warmup --lr_warmup_steps 100
        --use_ema --random_flip --report_to none --logging_steps 50 --validation_steps 1000000
        --checkpoints_total_limit 1)

resume_flag() {  # resume_flag OUTPUT_DIR: --resume_from_checkpoint latest when OUTPUT_DIR holds a checkpoint
    if ls -d "$1"/checkpoint-* >/dev/null 2>&1; then echo "--resume_from_checkpoint latest"; fi
}

segments() {  # segments NAME SEGMENT LAST_STEP SCRIPT PRODUCT TRAIN_ARGS...: train to each segment end, keep PRODUCT
    local name=$1 segment=$2 last=$3 script=$4 product=$5 step; shift 5
    local every=${CHECKPOINT_STEPS[$name]}
    local out="$RUNS/$name"
    for ((step = segment; step <= last; step += segment)); do
        [ -d "$out/$product-$step" ] && continue  # copied whole, then renamed: present means complete
        # shellcheck disable=SC2046
        python "examples/$script" "$@" --max_train_steps "$step" \
            --checkpointing_steps "$every" $(resume_flag "$out") --output_dir "$out"
        cp -r "$out/$product" "$out/$product-$step.tmp" && mv "$out/$product-$step.tmp" "$out/$product-$step"
        echo "$(date -u +%FT%TZ) $name: $product-$step saved"
    done
}

# 0. teacher
if [ ! -f "$RUNS/teacher/vqgan/config.json" ]; then
    # shellcheck disable=SC2046
    python examples/train_vqgan.py --idx_data_dir "$DATA" --preset fmnist-f4 --learning_rate 1e-3 \
        --lr_warmup_steps 100 --train_batch_size 64 --use_ema --random_flip --max_train_steps "$TEACHER_STEPS" \
        --perceptual_weight 0.5 --lpips_weights "$LPIPS" --report_to none --logging_steps 50 \
        --validation_steps 1000000 --checkpointing_steps 1000 --checkpoints_total_limit 1 \
        $(resume_flag "$RUNS/teacher") --output_dir "$RUNS/teacher"
fi
# 1. stage 1
segments stage1 "$STAGE1_SEGMENT" "$STAGE1_STEPS" train_tokenizer.py tokenizer "${COMMON[@]}" --preset fmnist-32 \
    --config_overrides "{$SIZES, $PIXEL}" --learning_rate 1e-3 --proxy_teacher "$RUNS/teacher/vqgan"
# 2. stage 2
segments stage2 "$STAGE2_SEGMENT" "$STAGE2_STEPS" train_tokenizer.py tokenizer "${COMMON[@]}" \
    --pretrained_model_name_or_path "$RUNS/stage1/tokenizer-$STAGE1_STEPS" --train_decoder_only --learning_rate 1e-4 --perceptual_weight 0.5 --lpips_weights "$LPIPS" --gan_weight 0.5 \
    --adaptive_gan_weight --discriminator_start 0 --discriminator_channels 64 --lecam_weight 0.001
echo "$(date -u +%FT%TZ) stage 2 done ($STAGE2_STEPS steps)"
# 3. codes of the 60,000 training images and their mirrors (pretokenize resumes by shard). Stage 2 freezes the
#    encoder and the codebook, so stage 1's tokenizer gives the same codes, and steps 3-4 can run on another core
#    while stage 2 trains: `STAGE2_STEPS=0 bash benchmarks/demo_tokenizer_run.sh RUNS` there and
#    `GENERATOR_STEPS=0 bash benchmarks/demo_tokenizer_run.sh RUNS` for stage 2 (never two runs of one step).
[ -f "$RUNS/codes/pretokenize.json" ] || python examples/pretokenize.py --idx_data_dir "$DATA" --flip \
    --tokenizer "$RUNS/stage1/tokenizer-$STAGE1_STEPS" --output_dir "$RUNS/codes"
# 4. generator (the demo's preset small), constant learning rate after warm-up so that segments are one run; each
#    segment end keeps a pipeline (tokenizer + EMA generator) for the gFID curve
segments generator "$GENERATOR_SEGMENT" "$GENERATOR_STEPS" train_generator.py pipeline \
    --tokenized_dataset "$RUNS/codes" --preset small --train_batch_size 64 --learning_rate 1e-3 \
    --lr_scheduler constant_with_warmup --lr_warmup_steps 200 --use_ema --guidance_scale 1.5 --report_to none \
    --logging_steps 50 --validation_steps 1000000 --checkpoints_total_limit 1
echo "$(date -u +%FT%TZ) generator done ($GENERATOR_STEPS steps)"
