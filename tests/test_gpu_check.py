"""scripts/gpu_check.sh: the device script's dry run end to end on the CPU (tiny shape, hf), and its refusal to start
on the device without the staged tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True, env=environ, cwd=ROOT
    )


def test_a_missing_tokenizer_is_an_error(tmp_path):
    proc = run_check(tmp_path / "out", WHL=str(tmp_path / "no-wheels"))
    assert proc.returncode == 1
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["status"] == "error" and "tokenizer-smollm2" in status["error"]


@pytest.mark.slow
def test_dry_run_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    proc = run_check(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    probe = json.loads((out / "probe.json").read_text())
    assert all(probe[m]["ok"] for m in ("trl", "peft", "datasets")) and "unsloth" not in probe
    assert json.loads((out / "status.json").read_text()) == {"status": "done"}
    full = json.loads((out / "grpo_step_tiny.json").read_text())
    lora = json.loads((out / "grpo_step_tiny-lora.json").read_text())
    for res, ft in ((full, "full"), (lora, "lora")):
        (row,) = res["rows"]
        assert row["status"] == "ok" and row["finetuning"] == ft and row["steps"] == 2, row
        assert row["trainable_dtype"] == ["torch.float32"] and row["computed_peak_gib"] > 0
    st = full["settings"]
    assert (st["completions_per_step"], st["per_device_train_batch_size"], st["generation_chunk"]) == (8, 4, 4)
    assert st["gradient_accumulation_steps"] == 2 and st["finetuning"] == "full"
    assert (full["shape"], lora["shape"]) == ("tiny", "tiny-lora")
    assert (out / "gpu_check.log").read_text().count("== ") == 2  # both phases ran
