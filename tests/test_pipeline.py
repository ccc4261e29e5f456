"""The whole notebook chain 01→07 on the tiny profile (what `make smoke` / `make reproduce PROFILE=tiny` run), and the
provenance rules on its outputs: finished steps are no-ops, changed settings start over, reuse only on a match."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from opgrpo_lib import generate, pipeline, train
from opgrpo_lib.config import load_profile
from opgrpo_lib.paths import REPO_ROOT
from opgrpo_lib.provenance import StaleUpstream, recorded, step_key
from opgrpo_lib.runs import run_paths


def _repo_results_state() -> str:
    out = subprocess.run(["git", "status", "--porcelain", "--", "results", "figures"], cwd=REPO_ROOT,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout


@pytest.fixture(scope="module")
def chain(tmp_path_factory, opv2_dir):
    run = tmp_path_factory.mktemp("smoke")
    os.environ["OPGRPO_DATA_DIR"] = str(opv2_dir)
    before = _repo_results_state()
    report = pipeline.reproduce("tiny", str(run), quiet=True)
    assert _repo_results_state() == before, "a run never writes into the repository's results/ or figures/"
    return run, report


def _copy_run(run, dest, steps=("data", "estimator", "sft", "grpo")):
    for step in steps:
        shutil.copytree(run / step, dest / step)
    return dest


@pytest.mark.slow
def test_chain_runs_every_notebook(chain):
    run, report = chain
    assert [r["notebook"] for r in report] == [p.name for p in pipeline.notebooks()]
    assert all(r["status"] == "ran" for r in report)
    for nb in pipeline.notebooks():
        assert (run / "executed" / nb.name).exists()
    ckpt = pd.read_csv(run / "results" / "eval" / "checkpoint_coverage.csv")
    assert ckpt["step"].min() == 0 and ckpt["step"].nunique() >= 2, "step 0 and at least one saved checkpoint"
    assert (run / "figures" / "INDEX.md").exists() and (run / "results" / "generations" / "op_grpo.jsonl").exists()
    cfg = load_profile("tiny")
    for step in ("data", "estimator", "sft", "grpo", "generate", "evaluate", "figures"):
        rec = recorded(run / step)
        assert rec["status"] == "finished" and rec["key"] == step_key(cfg, step), step
    assert not list((run / "grpo" / "checkpoints").glob("checkpoint-*/optimizer.pt")), "finished: no optimizer states"
    assert json.loads((run / "grpo" / "manifest.json").read_text())["longest_prompt_tokens"] > 10


@pytest.mark.slow
def test_training_changed_parameters_and_logged_every_component(chain):
    from safetensors.torch import load_file

    run, _ = chain
    sft = load_file(str(run / "sft" / "policy" / "model.safetensors"))
    grpo = load_file(str(run / "grpo" / "policy" / "model.safetensors"))
    changed = [k for k in sft if not torch.equal(sft[k], grpo[k])]
    assert changed, "GRPO did not change any parameter"
    from opgrpo_lib.models import resolve

    base = load_file(str(os.path.join(resolve("tiny:causal-lm"), "model.safetensors")))
    assert any(not torch.equal(base[k], sft[k]) for k in base), "SFT did not change any parameter"
    log = pd.read_csv(run / "results" / "train_log.csv")
    for comp in ("coverage", "uniqueness", "format", "tag", "total"):
        assert f"op_reward/{comp}" in log.columns and log[f"op_reward/{comp}"].notna().all()
    assert {"loss", "kl", "reward"} <= set(log.columns)
    assert (log["reward_std"] > 1e-3).any(), "some GRPO group had reward variance (a real learning signal)"


@pytest.mark.slow
def test_rerun_skips_everything_and_plans_only_what_changed(chain):
    run, _ = chain
    report = pipeline.reproduce("tiny", str(run), quiet=True)
    assert all(r["status"] == "skipped" for r in report)
    cfg = load_profile("tiny")
    reruns = {
        "eval.bootstrap_reps": (500, ["06_evaluate", "07_figures_and_tables"]),
        "generate.max_new_tokens": (8, ["05_generate", "06_evaluate", "07_figures_and_tables"]),
        "train.grpo.learning_rate": (2e-3, ["04_op_grpo", "05_generate", "06_evaluate", "07_figures_and_tables"]),
    }
    for key, (value, expected) in reruns.items():
        changed = load_profile("tiny", {key: value})
        planned = [p["notebook"][:-6] for p in pipeline.plan(changed, run) if p["run"]]
        assert planned == expected, (key, planned)
    only = pipeline.plan(cfg, run, only=["05"])
    assert [p["run"] for p in only] == [False], "--only uses the same keys: an up-to-date step stays skipped"


@pytest.mark.slow
def test_finished_training_rerun_is_a_no_op(chain, tmp_path):
    run, _ = chain
    work = _copy_run(run, tmp_path / "run")
    shutil.copytree(run / "results", work / "results")
    cfg = load_profile("tiny")
    before = sorted(p.name for p in (work / "grpo" / "checkpoints").iterdir())
    res = train.run_grpo(cfg, run_paths(cfg, work))
    assert res.get("skipped") and sorted(p.name for p in (work / "grpo" / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_changed_settings_retrain_and_regenerate(chain, tmp_path):
    """Retraining GRPO with another learning rate starts a new run; generation then refuses the old outputs."""
    run, _ = chain
    work = _copy_run(run, tmp_path / "run", ("data", "estimator", "sft", "grpo", "generate"))
    new = load_profile("tiny", {"train.grpo.learning_rate": 2e-3, "train.grpo.max_steps": 2})
    with pytest.raises(StaleUpstream, match="learning_rate"):
        generate.run(new, run_paths(new, work), progress=False)
    train.run_grpo(new, run_paths(new, work))
    assert (work / "grpo.previous" / "checkpoints").exists(), "the old run is kept aside, not continued"
    assert recorded(work / "grpo")["key"] == step_key(new, "grpo")
    old_rows = [json.loads(x) for x in (work / "generate" / "op_grpo.jsonl").read_text().splitlines()]
    out = generate.run(new, run_paths(new, work), progress=False)
    rows = out[out["system"] == "op_grpo"]
    assert set(rows["fingerprint"]) != {r["fingerprint"] for r in old_rows}, "op_grpo rows were regenerated"
    base = out[out["system"] == "base_implicit"]
    old_base = [json.loads(x) for x in (run / "generate" / "base_implicit.jsonl").read_text().splitlines()]
    assert base["text"].tolist() == [r["text"] for r in old_base], "unaffected systems are reused as they were"


@pytest.mark.slow
def test_same_seed_same_outputs(chain, tmp_path):
    """Generating the same step again in a fresh run folder gives byte-identical texts."""
    run, _ = chain
    work = _copy_run(run, tmp_path / "run", ("data", "sft", "grpo", "estimator"))
    cfg = load_profile("tiny")
    out = generate.run(cfg, run_paths(cfg, work), progress=False)
    first = pd.read_parquet(run / "generate" / "outputs.parquet")
    assert out["text"].tolist() == first["text"].tolist()


@pytest.mark.slow
def test_grpo_resumes_from_last_complete_checkpoint(chain, tmp_path, capsys):
    """A run killed while saving checkpoint-4 (its weights truncated) continues from checkpoint-2."""
    from transformers import TrainerCallback

    run, _ = chain
    work = _copy_run(run, tmp_path / "run", ("data", "sft", "estimator"))
    cfg = load_profile("tiny", {"train.grpo.max_steps": 4, "train.grpo.save_steps": 2})
    paths = run_paths(cfg, work)

    class Killed(RuntimeError):
        pass

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 4:
                raise Killed

    with pytest.raises(Killed):
        train.run_grpo(cfg, paths, callbacks=[KillAfterSave()])
    weights = work / "grpo" / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert recorded(work / "grpo")["status"] == "running"

    class Steps(TrainerCallback):
        ran: list = []

        def on_step_end(self, args, state, control, **kw):
            Steps.ran.append(state.global_step)

    res = train.run_grpo(cfg, paths, callbacks=[Steps()])
    assert Steps.ran == [3, 4], Steps.ran  # resumed from checkpoint-2: only steps 3-4 ran again
    assert "skipping checkpoint-4" in capsys.readouterr().out
    assert res["log"]["step"].tolist()[-1] == 4 and recorded(work / "grpo")["status"] == "finished"


@pytest.mark.slow
def test_failure_names_notebook_and_cell(tmp_path, opv2_dir):
    os.environ["OPGRPO_DATA_DIR"] = str(opv2_dir)
    with pytest.raises(pipeline.StepFailed, match=r"05_generate\.ipynb failed in cell \d+.*04_op_grpo"):
        pipeline.reproduce("tiny", str(tmp_path), only=["01", "05"], quiet=True)
    assert (tmp_path / "data" / "eval.parquet").exists(), "earlier outputs stay"
