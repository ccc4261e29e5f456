#!/usr/bin/env bash
# GPU check: Unsloth vs plain TRL GRPO step at the paper's shape, on a CUDA machine without internet (the lent
# device machine), in one call of at most ~9 minutes.
#   here:    .venv/bin/python scripts/fetch_gpu_wheels.py      # wheels the device lacks + tokenizer -> .whl/, size check
#   device:  run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
# It installs .whl/*.whl into /tmp/site, prints the versions, then runs benchmarks/grpo_step.py for qwen2.5-3b (hf
# and unsloth, paper settings: 40 completions of up to 800 tokens per step, 3 steps, the first not counted) and,
# if time is left, qwen2.5-1.5b, then the GPU tests. JSON results and the full log go to $OUT (they come back to the
# session: copy the JSON into results/gpu/ and commit it). Knobs: GPU_CHECK_BUDGET_S (default 540), STEPS (3),
# SHAPES ("qwen2.5-3b qwen2.5-1.5b"), BACKENDS ("hf unsloth"; add unsloth-4bit with fetch_gpu_wheels.py --slim).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-540}
left() { echo $((BUDGET - (SECONDS - START))); }
OUT_DIR="${OUT:-results/gpu}"   # JSON results (on the device: $OUT, which comes back to the session)
mkdir -p "$OUT_DIR"
exec > >(tee -a "${OUT:-/tmp}/gpu_check.log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/: run scripts/fetch_gpu_wheels.py here and carry .whl"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU"; exit 1; }
python3 - <<'PY'
from importlib import metadata
for m in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "sentence-transformers", "unsloth",
          "unsloth_zoo", "bitsandbytes", "torchao", "triton"):
    try:
        print(f"{m:22s} {metadata.version(m)}")
    except metadata.PackageNotFoundError:
        print(f"{m:22s} MISSING")
PY
echo "installed in $((SECONDS - START)) s"
read -r -a backends <<<"${BACKENDS:-hf unsloth}"
for shape in ${SHAPES:-qwen2.5-3b qwen2.5-1.5b}; do
  per=$((($(left) - 45) / ${#backends[@]}))  # seconds per backend process (45 s kept for the model build)
  if [ "$per" -lt 75 ]; then
    echo "skipping $shape: $(left) s left of the ${BUDGET} s budget"
    continue
  fi
  [ "$per" -gt 240 ] && per=240
  echo "== $shape (at most $per s per process, $(left) s left)"
  python3 benchmarks/grpo_step.py --shape "$shape" --backends "${backends[@]}" --steps "${STEPS:-3}" \
    --timeout "$per" --out "$OUT_DIR/grpo_step_$shape.json"
done
if [ "$(left)" -gt 150 ]; then
  timeout $(($(left) - 10)) python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -5
else
  echo "GPU tests skipped: $(left) s left"
fi
echo "gpu_check done in $((SECONDS - START)) s"
