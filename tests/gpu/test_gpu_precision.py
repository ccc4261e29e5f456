"""On a CUDA GPU: the paper profile's loading path keeps every update at lr 1e-6 with both backends (fp32 masters),
and pure bf16 weights do not (the CPU test's claim, on the real backends). One process per backend: Unsloth must be
imported before trl/transformers/peft."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = """
import json, sys, tempfile
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
from test_precision import one_grpo_step
frac, plan, trainer = one_grpo_step({precision!r}, Path(tempfile.mkdtemp()), backend={backend!r}, device="cuda")
print(json.dumps({{"fraction": frac, "master": plan.master}}))
"""


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
@pytest.mark.parametrize("precision", ["mixed", "bf16"])
def test_one_step_at_lr_1e6_moves_every_weight_with_fp32_masters(backend, precision):
    code = CODE.format(root=str(ROOT), tests=str(ROOT / "tests"), precision=precision, backend=backend)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    frac = json.loads(out.stdout.strip().splitlines()[-1])["fraction"]
    assert (frac >= 0.99) if precision == "mixed" else (frac < 0.99), frac
