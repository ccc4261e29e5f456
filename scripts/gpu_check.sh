#!/usr/bin/env bash
# GPU check in one device call of at most ~6 minutes, so that a 15-minute device budget leaves room to rerun it:
#   here:    .venv/bin/python scripts/fetch_gpu_wheels.py      # wheels the device lacks + tokenizer -> .whl/ (size check)
#   device:  run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=420)
#   here:    bash scripts/gpu_check.sh --dry-run               # the same phases: tiny shape, CPU, hf only
# Phases, each result written to $OUT as soon as it lands (the JSON is rewritten after every backend):
#   1. import probe (unsloth first, then trl, peft, datasets): $OUT/probe.json; a failed import stops here.
#   2. the paper's configuration: full fine-tuning (fp32 masters + bf16 autocast), qwen2.5-3b shape, one optimizer
#      step of the paper profile = 160 completions (16 prompts x 10) of up to 800 tokens, micro-batches of 20,
#      generated 160 per call (a quarter of an RL round), 2 steps (the first = warm-up), unsloth then hf:
#      $OUT/grpo_step_qwen2.5-3b.json
#   3. LoRA (train.lora), 40 completions of up to 200 tokens per step, unsloth then hf:
#      $OUT/grpo_step_qwen2.5-3b-lora.json
# Each backend process is killed at its share of the budget and keeps the steps it measured. Knobs:
# GPU_CHECK_BUDGET_S (default 330), LORA_S (70), BUILD_S (40: building the random 3B model), SHAPE (qwen2.5-3b),
# BACKENDS ("unsloth hf"). Expected: ~10 s install, ~20 s probe, ~250 s full fine-tuning, ~65 s LoRA.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
START=$SECONDS
OUT_DIR="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
note() { echo "[gpu_check $((SECONDS - START)) s] $*"; }
fail() {
  note "ERROR: $*"
  python3 -c 'import json,sys; print(json.dumps({"status": "error", "error": sys.argv[1]}))' "$*" >"$OUT_DIR/status.json"
  exit 1
}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-1800}  # the CPU is slow; the dry run checks the wiring, not the time
  SHAPE=tiny DEVICE=cpu
  read -r -a BACKENDS <<<"${BACKENDS:-hf}"
  PROBE="trl peft datasets"
  FULL=(--batch 8 --generations 4 --micro-batch 4 --chunk 4 --completion-length 16)
  LORA=(--batch 8 --generations 4 --micro-batch 4 --completion-length 16)
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  BUDGET=${GPU_CHECK_BUDGET_S:-330}
  SHAPE=${SHAPE:-qwen2.5-3b} DEVICE=cuda
  read -r -a BACKENDS <<<"${BACKENDS:-unsloth hf}"
  PROBE="unsloth trl peft datasets"
  FULL=()  # the paper profile's step: 160 completions, micro-batch 20, generation chunk 160, 800 tokens
  LORA=(--batch 40 --completion-length 200)  # 4 prompts x 10, shorter completions: LoRA fits its ~35 s per backend
  WHL=${WHL:-.whl}
  [ -f "$WHL/tokenizer-smollm2/tokenizer.json" ] || fail "no $WHL/tokenizer-smollm2: run scripts/fetch_gpu_wheels.py here and carry .whl"
  ls "$WHL"/*.whl >/dev/null 2>&1 || fail "no wheels in $WHL/: run scripts/fetch_gpu_wheels.py here and carry .whl"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
    || fail "installing $WHL/*.whl failed"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "no NVIDIA GPU (nvidia-smi)"
  note "wheels installed"
fi
left() { echo $((BUDGET - (SECONDS - START))); }

# 1. import probe, in one interpreter and in this order (unsloth must come before trl/peft); stops on a failure
$PY - "$OUT_DIR/probe.json" $PROBE <<'PY' || fail "import probe failed (see probe.json)"
import json, sys, time
from importlib import metadata

out, mods = sys.argv[1], sys.argv[2:]
res, ok = {}, True
for m in mods:
    t = time.perf_counter()
    try:
        __import__(m)
        res[m] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, then the check stops
        res[m] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-500:]}
        ok = False
    res[m]["import_s"] = round(time.perf_counter() - t, 1)
for m in (*mods, "torch", "transformers", "accelerate", "xformers", "unsloth_zoo", "triton", "bitsandbytes"):
    try:
        res.setdefault(m, {})["version"] = metadata.version(m)
    except metadata.PackageNotFoundError:
        res.setdefault(m, {})["version"] = None
import torch

res["cuda"] = {"available": torch.cuda.is_available(), "build": torch.version.cuda,
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
json.dump(res, open(out, "w"), indent=1)
for m, r in res.items():
    print(f"{m:14s} {r}")
sys.exit(0 if ok else 1)
PY
note "import probe passed: $OUT_DIR/probe.json"

WORK=$(mktemp -d /tmp/grpo_step_work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
run_phase() {  # name, seconds for the whole phase, grpo_step.py arguments...
  local name=$1 seconds=$2
  shift 2
  local per=$(((seconds - ${BUILD_S:-0}) / ${#BACKENDS[@]}))  # BUILD_S: kept for building the model (first phase)
  if [ "$per" -lt 30 ]; then
    note "skipping $name: $(left) s left of the ${BUDGET} s budget"
    return
  fi
  note "== $name: ${BACKENDS[*]}, at most $per s per backend process"
  $PY benchmarks/grpo_step.py --shape "$SHAPE" --device "$DEVICE" --backends "${BACKENDS[@]}" --steps 2 \
    --timeout "$per" --work-dir "$WORK" "$@" || note "$name exited with $?"
}
# 2. the paper's configuration (full fine-tuning; the model is built once, in its first process) gets what is left
# but LORA_S (default 70 s), 3. LoRA the rest
LORA_S=${LORA_S:-70}
[ "$DRY" = 1 ] && LORA_S=$(($(left) / 2))
BUILD_S=${BUILD_S:-40} run_phase "full fine-tuning" $(($(left) - LORA_S)) --full-finetune "${FULL[@]}" --out "$OUT_DIR/grpo_step_${SHAPE}.json"
run_phase "LoRA" $(($(left) - 5)) "${LORA[@]}" --label "${SHAPE}-lora" --out "$OUT_DIR/grpo_step_${SHAPE}-lora.json"
ls "$OUT_DIR"/grpo_step_*.json >/dev/null 2>&1 || fail "no benchmark result was written"
echo '{"status": "done"}' >"$OUT_DIR/status.json"
note "done; results in $OUT_DIR"
