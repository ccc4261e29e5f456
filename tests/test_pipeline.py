"""The whole notebook chain 01→07 on the tiny profile (what `make smoke` / `make reproduce PROFILE=tiny` run)."""

import json
import os

import pandas as pd
import pytest
import torch

from opgrpo_lib import pipeline
from opgrpo_lib.config import load_profile


@pytest.fixture(scope="module")
def chain(tmp_path_factory, opv2_dir):
    run = tmp_path_factory.mktemp("smoke")
    os.environ["OPGRPO_DATA_DIR"] = str(opv2_dir)
    report = pipeline.reproduce("tiny", str(run))
    return run, report


@pytest.mark.slow
def test_chain_runs_every_notebook(chain):
    run, report = chain
    assert [r["notebook"] for r in report] == [p.name for p in pipeline.notebooks()]
    assert all(r["status"] == "ran" for r in report)
    for nb in pipeline.notebooks():
        assert (run / "executed" / nb.name).exists()
    ckpt = pd.read_csv(pipeline.REPO_ROOT / "results" / "tiny" / "eval" / "checkpoint_coverage.csv")
    assert ckpt["step"].min() == 0 and ckpt["step"].nunique() >= 2, "step 0 and at least one saved checkpoint"


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
    results = load_profile("tiny")
    log = pd.read_csv(pipeline.REPO_ROOT / "results" / results.profile / "train_log.csv")
    for comp in ("coverage", "uniqueness", "format", "tag", "total"):
        assert f"op_reward/{comp}" in log.columns and log[f"op_reward/{comp}"].notna().all()
    assert {"loss", "kl", "reward"} <= set(log.columns)
    assert (log["reward_std"] > 1e-3).any(), "some GRPO group had reward variance (a real learning signal)"


@pytest.mark.slow
def test_rerun_skips_up_to_date_steps_and_resume_continues(chain):
    run, _ = chain
    report = pipeline.reproduce("tiny", str(run))
    assert all(r["status"] == "skipped" for r in report)
    manifest = json.loads((run / "grpo" / "manifest.json").read_text())
    assert manifest["config_hash"] == load_profile("tiny").config_hash and manifest["seed"] == 0
    assert manifest["packages"]["trl"] == "1.14.2" and "timings_s" in manifest


@pytest.mark.slow
def test_grpo_resumes_from_last_checkpoint(chain, tmp_path):
    """A killed run (simulated: checkpoint-2 kept, later ones gone) continues from step 2 when rerun."""
    import shutil

    from opgrpo_lib import train
    from opgrpo_lib.runs import run_paths

    run, _ = chain
    work = tmp_path / "run"
    shutil.copytree(run / "data", work / "data")
    shutil.copytree(run / "sft", work / "sft")
    shutil.copytree(run / "estimator", work / "estimator")
    cfg = load_profile("tiny", {"train.grpo.max_steps": 4, "train.grpo.save_steps": 2})
    paths = run_paths(cfg, work, tmp_path / "results")
    train.run_grpo(cfg, paths)
    ckpts = sorted((work / "grpo" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts][-1] == "checkpoint-4"
    shutil.rmtree(ckpts[-1])  # the run "died" after step 2
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        ran: list = []

        def on_step_end(self, args, state, control, **kw):
            Steps.ran.append(state.global_step)

    res = train.run_grpo(cfg, paths, callbacks=[Steps()])
    assert Steps.ran == [3, 4], Steps.ran  # resumed from checkpoint-2: only steps 3-4 ran again
    assert res["log"]["step"].tolist()[-1] == 4


@pytest.mark.slow
def test_failure_names_notebook_and_cell(tmp_path, opv2_dir):
    os.environ["OPGRPO_DATA_DIR"] = str(opv2_dir)
    with pytest.raises(pipeline.StepFailed, match=r"05_generate\.ipynb failed in cell \d+.*04_op_grpo"):
        pipeline.reproduce("tiny", str(tmp_path), only=["01", "05"])
    assert (tmp_path / "data" / "eval.parquet").exists(), "earlier outputs stay"
