"""The whole notebook chain 01→07 on the tiny profile (what `make smoke` / `make reproduce PROFILE=tiny` run), and the
provenance rules on its outputs: finished steps are no-ops, changed settings start over, reuse only on a match."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from opgrpo_lib import pipeline
from opgrpo_lib.config import load_profile
from opgrpo_lib.keys import StaleUpstream, recorded, step_key
from opgrpo_lib.paths import REPO_ROOT
from opgrpo_lib.runs import run_paths
from opgrpo_lib.steps import generate, validation
from opgrpo_lib.steps import grpo as grpo_step
from opgrpo_lib.steps import sft as sft_step


def _repo_results_state() -> str:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--", "results", "figures"], cwd=REPO_ROOT, capture_output=True, text=True
    )
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
    summary = pd.read_csv(run / "results" / "alignment" / "summary.csv")  # the alignment check ran after SFT
    assert (
        set(summary["variant"]) >= {"authors", "unmasked", "oracle"}
        and (run / "figures" / "reward_alignment.png").exists()
    )
    styles = pd.read_csv(run / "results" / "styles" / "summary.csv")  # every style, mode and language ran
    assert {"control", "bare", "control+empty", "control.zh", "dilemma.zh"} <= set(styles["condition"])
    assert set(styles["system"]) == set(cfg.styles.systems) and (run / "figures" / "prompt_styles.png").exists()
    nli = pd.read_csv(run / "results" / "styles" / "nli_summary.csv")  # the NLI protocol in both languages
    assert set(nli["condition"]) == set(styles["condition"]) and nli["accuracy"].between(0, 1).all()
    assert (run / "figures" / "tables" / "prompt_styles_nli.md").exists(), "step 07 tabulates them"
    check = json.loads((run / "results" / "translate" / "report.json").read_text())["nli_calibration"]
    assert {"agreement", "kappa"} <= set(check)  # the Chinese NLI rows carry that check's verdict
    assert set(nli.loc[nli["language"] == "zh", "evaluator_validated"]) == {check["validated"]}
    assert (run / "results" / "translate" / "report.json").exists() and not (
        run / "results" / "translate" / "zh.parquet"
    ).exists()
    for path in (run / "results" / "manifests").glob("*.json"):  # every manifest names the commit that made it
        assert len(json.loads(path.read_text())["git"]["sha"] or "") == 40, path.name


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
        "eval.bootstrap_reps": (500, ["06_evaluate", "07_figures"]),
        "generate.max_new_tokens": (8, ["05_generate", "06_evaluate", "07_figures"]),
        "train.grpo.learning_rate": (2e-3, ["04_grpo", "05_generate", "06_evaluate", "07_figures"]),
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
    res = grpo_step.run(cfg, run_paths(cfg, work))
    assert res.get("skipped") and sorted(p.name for p in (work / "grpo" / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_changed_settings_retrain_and_regenerate(chain, tmp_path):
    """Retraining GRPO with another learning rate starts a new run; generation then refuses the old outputs."""
    run, _ = chain
    work = _copy_run(run, tmp_path / "run", ("data", "estimator", "sft", "grpo", "generate"))
    new = load_profile("tiny", {"train.grpo.learning_rate": 2e-3, "train.grpo.max_steps": 2})
    with pytest.raises(StaleUpstream, match="learning_rate"):
        generate.run(new, run_paths(new, work), progress=False)
    grpo_step.run(new, run_paths(new, work))
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
        grpo_step.run(cfg, paths, callbacks=[KillAfterSave()])
    weights = work / "grpo" / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert recorded(work / "grpo")["status"] == "running"

    class Steps(TrainerCallback):
        ran: list = []

        def on_step_end(self, args, state, control, **kw):
            Steps.ran.append(state.global_step)

    res = grpo_step.run(cfg, paths, callbacks=[Steps()])
    assert Steps.ran == [3, 4], Steps.ran  # resumed from checkpoint-2: only steps 3-4 ran again
    assert "skipping checkpoint-4" in capsys.readouterr().out
    assert res["log"]["step"].tolist()[-1] == 4 and recorded(work / "grpo")["status"] == "finished"


@pytest.mark.slow
def test_failure_names_notebook_and_cell(tmp_path, opv2_dir):
    os.environ["OPGRPO_DATA_DIR"] = str(opv2_dir)
    with pytest.raises(pipeline.StepFailed, match=r"05_generate\.ipynb failed in cell \d+.*04_grpo"):
        pipeline.reproduce("tiny", str(tmp_path), only=["01", "05"], quiet=True)
    assert (tmp_path / "data" / "eval.parquet").exists(), "earlier outputs stay"


# ---------------------------------------------------------------- run-folder safety on a finished tiny run (issue 22)
def _tree(root) -> dict[str, str]:
    import hashlib
    from pathlib import Path

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def _cli(*args, **kw):
    import sys

    return subprocess.run([sys.executable, "-m", "opgrpo_lib.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_a_refused_start_leaves_the_finished_run_byte_identical(chain, tmp_path, monkeypatch):
    """Issue 22: `opgrpo grpo --set train.grpo.learnin_rate=1e-3` (a typo), a full disk or a failing model load
    refuse before anything moves; `opgrpo reproduce` with the original settings then retrains nothing."""
    import opgrpo_lib.runs

    run, _ = chain
    work = tmp_path / "X"
    shutil.copytree(run, work, symlinks=True)  # cp -a FINISHED X
    before = _tree(work)
    out = _cli("grpo", "--profile", "tiny", "--run-dir", str(work), "--set", "train.grpo.learnin_rate=1e-3")
    assert out.returncode == 2 and "learnin_rate" in out.stderr and "Traceback" not in out.stderr
    assert _tree(work) == before

    new = load_profile("tiny", {"train.grpo.learning_rate": 5e-2})
    full = opgrpo_lib.runs.shutil.disk_usage(work)._replace(free=0)
    with monkeypatch.context() as m:
        m.setattr(opgrpo_lib.runs.shutil, "disk_usage", lambda path: full)
        for _ in range(2):  # a second try on the full disk deleted the finished run before
            with pytest.raises(OSError, match="GB free"):
                grpo_step.run(new, run_paths(new, work))
    with monkeypatch.context() as m:

        def no_model(cfg, path, plan=None):
            raise OSError(f"{path}: cannot load")

        m.setattr(grpo_step, "load_model", no_model)
        m.setattr(sft_step, "load_model", no_model)
        with pytest.raises(OSError, match="cannot load"):
            grpo_step.run(new, run_paths(new, work))
        sft_new = load_profile("tiny", {"train.sft.learning_rate": 5e-2})
        with pytest.raises(OSError, match="cannot load"):
            sft_step.run(sft_new, run_paths(sft_new, work))
    assert _tree(work) == before, "a refused start changes nothing in the run folder"

    report = pipeline.reproduce("tiny", str(work), quiet=True)
    assert all(r["status"] == "skipped" for r in report), report
    assert not (work / "grpo.previous").exists()

    summary = _cli("grpo", "--profile", "tiny", "--run-dir", str(work))  # a real summary, not {}
    # after the "[grpo] finished" line; the validation step it runs next prints its own line after the JSON
    shown, _ = json.JSONDecoder().raw_decode(summary.stdout[summary.stdout.index("\n{") + 1 :])
    assert summary.returncode == 0 and shown["skipped"] is True and shown["policy"].endswith("grpo/policy")
    assert shown["log"]["rows"] > 0 and "loss" in shown["log"]["last"]


@pytest.mark.slow
def test_a_refused_reproduce_keeps_the_finished_notebook_record(chain, tmp_path):
    """A reproduce refused inside step 04 (a prompt over the limit, found before anything moves) writes
    ``04_grpo.failed.ipynb``; the finished run's executed notebook and record stay, so the original settings skip."""
    run, _ = chain
    work = tmp_path / "X"
    shutil.copytree(run, work, symlinks=True)
    executed = work / "executed"
    before = {p.name: p.read_bytes() for p in executed.glob("04_grpo*")}
    with pytest.raises(pipeline.StepFailed, match=r"04_grpo\.failed\.ipynb"):
        pipeline.reproduce("tiny", str(work), only=["04"], overrides={"train.max_prompt_length": 1}, quiet=True)
    assert {p.name: p.read_bytes() for p in executed.glob("04_grpo.*") if "failed" not in p.name} == before
    assert (executed / "04_grpo.failed.ipynb").exists()
    assert [r["status"] for r in pipeline.reproduce("tiny", str(work), only=["04"], quiet=True)] == ["skipped"]


@pytest.mark.slow
def test_a_new_training_run_reports_its_own_validation_curve(chain, tmp_path):
    """Issue 22: the old run's curve moves aside with it; the new run's curve equals a fresh run's."""
    run, _ = chain
    new = load_profile("tiny", {"train.grpo.learning_rate": 5e-2, "train.grpo.max_steps": 2})
    work = tmp_path / "X"
    shutil.copytree(run, work, symlinks=True)
    old_curve = (run / "results" / "validation_curve.csv").read_text()
    for folder in (work, _copy_run(run, tmp_path / "fresh", ("data", "estimator", "sft"))):
        grpo_step.run(new, run_paths(new, folder))
        validation.grpo(new, run_paths(new, folder))  # notebook 04 scores the curve after training
    fresh = tmp_path / "fresh"
    curve = pd.read_csv(work / "results" / "validation_curve.csv")
    assert curve["step"].tolist() == [0, 2]
    pd.testing.assert_frame_equal(curve, pd.read_csv(fresh / "results" / "validation_curve.csv"))
    assert (work / "grpo.previous" / "results" / "validation_curve.csv").read_text() == old_curve
    assert json.loads((work / "grpo.previous" / "replaced.json").read_text())["why"].count("learning_rate")
    # the original settings again: the kept run comes back with its own curve, nothing retrains
    cfg = load_profile("tiny")
    assert grpo_step.run(cfg, run_paths(cfg, work)).get("skipped")
    assert (work / "results" / "validation_curve.csv").read_text() == old_curve
    validation.grpo(cfg, run_paths(cfg, work))  # re-scored for the restored run: the same curve
    assert (work / "results" / "validation_curve.csv").read_text() == old_curve


@pytest.mark.slow
def test_the_curve_start_reuses_the_sft_validation_outputs(chain, tmp_path, monkeypatch):
    """Step 0 of GRPO's curve is the SFT policy that ``sft_validation`` already ran: its greedy outputs are reused
    (one generation fewer) and the curve is the one regenerating them gives."""
    from opgrpo_lib import validation as val_lib

    run, _ = chain
    work = tmp_path / "X"
    shutil.copytree(run, work, symlinks=True)
    cfg, paths = load_profile("tiny"), run_paths(load_profile("tiny"), work)
    calls = []
    real = val_lib.greedy_outputs
    monkeypatch.setattr(val_lib, "greedy_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = validation.grpo(cfg, paths, force=True)
    assert len(calls) == len(reused) - 1
    record = json.loads((work / "results" / "sft_validation.json").read_text())
    record["policy"] = "another policy"
    (work / "results" / "sft_validation.json").write_text(json.dumps(record))
    calls.clear()
    regenerated = validation.grpo(cfg, paths, force=True)
    assert len(calls) == len(regenerated)
    pd.testing.assert_frame_equal(reused, regenerated)


@pytest.mark.slow
def test_disabled_features_and_a_failing_judge_leave_no_stale_outputs(chain, tmp_path, monkeypatch):
    """Issue 22: NLI switched off and a removed system leave no old files behind (the same rule removes
    ``checkpoint_coverage.csv``, but switching that off changes GRPO's key since it decides which checkpoints are
    kept, so it retrains first); every judge request failing is reported as a failure and its figure panel is
    skipped with the reason."""
    from opgrpo_lib.steps import evaluate, figures, styles, translate

    run, _ = chain
    work = tmp_path / "X"
    shutil.copytree(run, work, symlinks=True)
    assert (work / "results" / "eval" / "checkpoint_coverage.csv").exists()
    assert (work / "results" / "eval" / "nli_per_sample.parquet").exists()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    systems = [s for s in load_profile("tiny").to_dict()["generate"]["systems"] if s["name"] != "modplural"]
    cfg = load_profile(
        "tiny",
        {
            "models.nli": None,
            "generate.systems": systems,
            "eval.judge.enabled": True,
            "eval.judge.base_url": "http://127.0.0.1:9/v1",
            "eval.judge.max_retries": 0,
        },
    )
    paths = run_paths(cfg, work)
    generate.run(cfg, paths, progress=False)
    translate.run(cfg, paths)  # its NLI check reads models.nli
    styles.run(cfg, paths, progress=False)  # notebook 05 runs it after generate; the figures draw it
    nli = pd.read_csv(work / "results" / "styles" / "nli_summary.csv")
    assert set(nli["language"]) == {"zh"}, "without models.nli only the Chinese rows (translate.zh_nli) are scored"
    assert not (work / "results" / "generations" / "modplural.jsonl").exists(), "a removed system's texts go"
    evaluate.run(cfg, paths, progress=False)
    eval_dir = work / "results" / "eval"
    assert not (eval_dir / "nli_per_sample.parquet").exists()
    assert (eval_dir / "checkpoint_coverage.csv").exists(), "still made by this run: kept"
    judge = json.loads((eval_dir / "eval_summary.json").read_text())["judge"]
    assert judge["status"] == "failed" and "0 of" in judge["reason"] and judge["scored"] == 0
    assert not (eval_dir / "judge_per_sample.parquet").exists()
    assert pipeline.failed_parts(work) == [f"LLM {judge['reason']}"], "reproduce says so and exits non-zero"
    res = figures.run(cfg, paths)
    by_name = {f["name"]: f for f in res["figures"]}
    assert by_name["LLM judge"]["status"] == "missing inputs" and "0 of" in by_name["LLM judge"]["note"]
    assert not list((work / "figures").rglob("llm_judge*"))


@pytest.mark.slow
def test_a_corrupt_checkpoint_at_step_06_is_named(chain, tmp_path):
    from opgrpo_lib import evaluate
    from opgrpo_lib.data import load_prepared

    run, _ = chain
    work = _copy_run(run, tmp_path / "X")
    ckpt = sorted((work / "grpo" / "checkpoints").glob("checkpoint-*"))[0]
    (ckpt / "model.safetensors").write_bytes(b"\0" * 100)
    cfg = load_profile("tiny")
    paths = run_paths(cfg, work)
    with pytest.raises(ValueError, match=rf"GRPO checkpoint {ckpt}: model.safetensors is incomplete"):
        evaluate.checkpoint_coverage(cfg, paths, load_prepared(paths.data)[1], None)


@pytest.mark.slow
def test_sigterm_stops_reproduce_and_its_kernel_mid_training(chain, tmp_path):
    """Issue 22: kill -TERM of `opgrpo reproduce` during step 04 stops the notebook and its kernel (nothing keeps
    training or writing checkpoints), leaves the step resumable and says so."""
    import signal
    import sys
    import time

    import psutil

    from opgrpo_lib.lifecycle import LOCK_NAME
    from opgrpo_lib.runs import last_complete_checkpoint

    run, _ = chain
    work = _copy_run(run, tmp_path / "X", ("data", "estimator", "sft"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "opgrpo_lib.cli", "reproduce", "--profile", "tiny", "--run-dir", str(work), "--only",
         "04", "--set", "train.grpo.max_steps=500", "--set", "train.grpo.save_steps=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ckpts = work / "grpo" / "checkpoints"
    while proc.poll() is None and not last_complete_checkpoint(ckpts, log=lambda _: None):
        time.sleep(1)
    assert proc.poll() is None, proc.communicate()
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert any("ipykernel" in " ".join(p.cmdline()) for p in tree), "the kernel runs in a session of its own"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert "stopped by SIGTERM while 04_grpo.ipynb ran" in err and "rerun the same command" in err
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "no orphan keeps running"
    saved = sorted(p.name for p in ckpts.iterdir())
    time.sleep(5)
    assert sorted(p.name for p in ckpts.iterdir()) == saved, "nothing writes checkpoints after the stop"
    assert recorded(work / "grpo")["status"] == "running" and last_complete_checkpoint(ckpts, log=lambda _: None)
    assert not (work / LOCK_NAME).exists()
