#!/usr/bin/env bash
# GPU check for the training backends (run on a CUDA machine without internet, e.g. the lent device machine).
# Brings its own wheels: put trl/unsloth/unsloth_zoo (and any missing deps) as manylinux/py3 wheels in .whl/
# (see DEVELOPERS.md), then:   bash scripts/gpu_check.sh
# It builds the tiny in-code model in place, runs a few GRPO steps with the hf and the unsloth backend on the same
# model and batch, and prints step time and peak memory for each (benchmarks/grpo_step.py), plus the GPU tests.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU"; exit 1; }
python3 - <<'PY'
import importlib
for m in ("torch", "transformers", "trl", "peft", "sentence_transformers", "unsloth"):
    try:
        mod = importlib.import_module(m) if m != "unsloth" else None
        print(f"{m:22s} {getattr(mod, '__version__', 'present') if mod else 'checked in its own process'}")
    except Exception as exc:  # noqa: BLE001
        print(f"{m:22s} MISSING ({type(exc).__name__})")
PY
OUT_DIR="${OUT:-/tmp}"
python3 benchmarks/grpo_step.py --backends hf unsloth --steps 4 --batch 8 --generations 4 --completion-length 64 \
  | tee "$OUT_DIR/grpo_step.txt"
python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -5
