#!/usr/bin/env bash
# The GPU check of issue 16: one command on a CUDA machine; --smoke runs the same code tiny on the CPU (CI).
#
#   bash benchmarks/gpu_check.sh [--smoke] [--output PATH]
#
# 1. `accelerate launch --mixed_precision bf16 --num_processes 1 benchmarks/gpu_check.py scripts`: every examples/
#    script for a few steps in bf16, resumed from its checkpoint for a few more; the saved pipelines then generate.
# 2. `python benchmarks/gpu_check.py bench`: bf16 matmul peak, training MFU, sampling vs GPT-2 generate, pipeline
#    images/s, FAR-B, CUDA vs CPU parity, compiled sampling (see the module docstring).
# 3. (not with --smoke) stage 1 again under `accelerate launch --config_file examples/accelerate_fsdp.yaml` on every
#    GPU: the rows "FSDP2 script ..." (per-block FSDP2, EMA over the shards, sharded checkpoints, unsharded saves).
# Both append rows to one markdown table: benchmarks/results/gpu.md by default (CUDA only), a temporary file with
# --smoke (never benchmarks/results/gpu.md), or --output PATH. The table is rewritten after every row, so a run cut
# short still leaves one. Exit status 1 when a row FAILs ("below target" is not a failure), 2 for a usage error.
# PYTHON selects the interpreter (default python3); each stage has a time limit (full: 240 s + 540 s + 240 s).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

arguments=("$@")
smoke=0
output=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --output) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --output needs a path" >&2; exit 2; }; output="$2"; shift 2 ;;
        --output=*) output="${1#--output=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (usage: [--smoke] [--output PATH])" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
results="$root/benchmarks/results/gpu.md"
if [[ -z "$output" ]]; then
    if (( smoke )); then output="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-smoke.XXXXXX")/gpu.md"; else output="$results"; fi
fi
output="$(realpath -m "$output")"
if (( smoke )) && [[ "$output" == "$(realpath -m "$results")" ]]; then
    echo "gpu_check.sh: --smoke never writes $results (that table holds the GPU run); choose another --output" >&2
    exit 2
fi

cd "$root"
command="bash benchmarks/gpu_check.sh${arguments[*]:+ ${arguments[*]}}"
echo "$command"
echo "table: $output"
if (( ! smoke )) && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA device; use --smoke for the CPU smoke run" >&2
    exit 2
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
# the smoke run's tiny models run best on one thread, and one thread does not stall on a busy shared CPU
(( smoke )) && export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
mkdir -p "$(dirname "$output")"
rm -f "$output"
common=(--output "$output" --rows "$work/rows.jsonl" --command "$command")
(( smoke )) && common+=(--smoke)
if (( smoke )); then limits=(150 150); else limits=(240 540); fi

# run_stage NAME SECONDS COMMAND...: its stderr goes to $work/NAME.log; a crash or timeout becomes a FAIL row.
run_stage() {
    local name="$1" limit="$2" status=0
    shift 2
    echo "== stage $name (at most $limit s; log $work/$name.log)"
    timeout --kill-after=15 "$limit" "$@" 2>"$work/$name.log" || status=$?
    if (( status != 0 )); then
        local reason="exited with status $status"
        (( status == 124 || status == 137 )) && reason="timed out after $limit s"
        tail -n 40 "$work/$name.log" >&2
        "$python" benchmarks/gpu_check.py fail "${common[@]}" --failed "$name" --reason "$reason" || true
    fi
}

run_stage scripts "${limits[0]}" "$python" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision bf16 --dynamo_backend no benchmarks/gpu_check.py scripts "${common[@]}" --work "$work"
run_stage bench "${limits[1]}" "$python" benchmarks/gpu_check.py bench "${common[@]}"
if (( ! smoke )); then  # the scripts again under FSDP2 on every GPU (accelerate refuses FSDP on a CPU machine)
    gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())')"
    run_stage fsdp "${limits[0]}" "$python" -m accelerate.commands.launch --config_file examples/accelerate_fsdp.yaml \
        --num_processes "$gpus" --num_machines 1 --dynamo_backend no benchmarks/gpu_check.py scripts "${common[@]}" \
        --work "$work/fsdp" --label "FSDP2 "
fi

echo
cat "$output"
if grep -q '| FAIL' "$output"; then
    echo "gpu_check.sh: some checks FAILed; the stage logs are kept in $work" >&2
    grep -h -B2 -A30 'Traceback' "$work"/*.log >&2 || true
    exit 1
fi
rm -rf "$work"
