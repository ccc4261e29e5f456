"""The benchmark scripts run and report what they claim (no wall-clock assertions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(script, *args):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_reward_speed_reports_identical_rewards(released_dir):
    res = run_json("reward_speed.py", "--prompts", "3", "--group", "3", "--repeats", "1")
    assert res["identical"] is True and res["completions"] == 9
    assert {"speedup_vs_reference", "ratio_to_encode_only"} <= set(res)
    assert res["distinct_sentences_encoded"] < res["sentences_encoded_by_reference"]


@pytest.mark.slow
def test_eval_speed_reports_identical_scores(released_dir):
    res = run_json("eval_speed.py", "--rows", "6", "--repeats", "1")
    assert res["identical"] is True and res["rows"] == 6 and "speedup_vs_per_situation" in res


@pytest.mark.slow
def test_grpo_step_benchmark_runs_hf_backend():
    res = run_json("grpo_step.py", "--steps", "2", "--batch", "4", "--completion-length", "8")
    assert res[0]["backend"] == "hf" and res[0]["steps"] == 2 and res[0]["step_s_mean"] > 0
