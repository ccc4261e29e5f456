"""GPU-only checks (auto-skipped without CUDA): both backends train on the same tiny model, LoRA and full
fine-tuning, with fp32 trainable weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.parametrize("finetuning", ["lora", "full"])
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_grpo_steps_on_gpu(backend, finetuning, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grpo_step.py"), "--shape", "tiny", "--backends", backend,
         "--steps", "2", "--batch", "8", "--micro-batch", "4", "--chunk", "4", "--generations", "4",
         "--completion-length", "64", "--quiet", "--out", str(tmp_path / "grpo_step_tiny.json"), "--json",
         *(["--full-finetune"] if finetuning == "full" else [])],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    (row,) = res["rows"]
    assert row["status"] == "ok", row
    assert res["device"]["type"] == "cuda" and row["steps"] == 2 and row["peak_gpu_mem_gib"] > 0
    assert row["finetuning"] == finetuning and row["trainable_dtype"] == ["torch.float32"]
