"""GPU-only checks (auto-skipped without CUDA): both backends train on the same tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_grpo_steps_on_gpu(backend):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grpo_step.py"), "--backends", backend, "--steps", "2", "--json"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])[0]
    assert "error" not in res, res
    assert res["device"] == "cuda" and res["steps"] == 2 and res["peak_gpu_mem_gb"] > 0
