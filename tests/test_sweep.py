"""The validation-sweep table: collected from run folders, refused when curves are not comparable, rendered by
the figures, and kept by ``publish`` when the published run has none."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from opgrpo_lib import figures, publish, sweep
from opgrpo_lib.config import load_profile
from opgrpo_lib.runs import run_paths

GRPO = {
    "learning_rate": 1e-5,
    "beta": 0.001,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_steps": 16,
    "max_completion_length": 320,
    "temperature": 1.0,
    "loss_type": "dapo",
}


def fake_run(root, sbert, sft_key="s1", n=40, **grpo):
    (root / "grpo").mkdir(parents=True)
    conf = {"train.grpo": {**GRPO, **grpo}, "train.lora": {"enabled": False}, "reward": {"weights": "final"}}
    fp = {"key": f"k-{root.name}", "status": "finished", "inputs": {"config": conf, "upstream": {"sft": sft_key}}}
    (root / "grpo" / "fingerprint.json").write_text(json.dumps(fp))
    (root / "results").mkdir()
    steps = range(0, 8 * len(sbert), 8)
    pd.DataFrame(
        {
            "step": steps,
            "n": n,
            "mean_reward": 0.6,
            "coverage_ladder": [1.0 + s / 100 for s in steps],
            "sbert_relative_accuracy": sbert,
            "valid_format_rate": 1.0,
            "clipped_ratio": 0.0,
            "mean_tokens": 200.0,
        }
    ).to_csv(root / "results" / "validation_curve.csv", index=False)
    return root


def test_collect_reports_each_point_with_its_settings(tmp_path):
    a = fake_run(tmp_path / "a", [0.30, 0.31, 0.25])
    pd.DataFrame({"step": range(1, 17), "kl": [i / 100 for i in range(1, 17)]}).to_csv(a / "results" / "train_log.csv")
    b = fake_run(tmp_path / "b", [0.30, 0.33], mask_truncated_completions=True, max_steps=8)
    table = sweep.collect({"A": a, "B": b}, chosen="B")
    assert len(table) == 5 and table.groupby("setting").size().to_dict() == {"A": 3, "B": 2}
    b_rows = table[table.setting == "B"]
    assert b_rows.chosen.all() and not table[table.setting == "A"].chosen.any()
    assert b_rows.mask_truncated_completions.all() and not table[table.setting == "A"].mask_truncated_completions.any()
    assert (table.prompts_per_step == 2).all()
    best = sweep.best_points(table).set_index("setting")
    assert best.loc["A", "best_step"] == 8 and best.loc["A", "final_sbert"] == 0.25 and best.loc["A", "steps"] == 16
    assert best.loc["B", "best_sbert"] == 0.33 and bool(best.loc["B", "chosen"])
    assert table[table.setting == "A"].train_kl.tolist() == [0.0, 0.08, 0.16]  # the log up to each point
    assert best.loc["A", "final_train_kl"] == 0.16 and pd.isna(best.loc["B", "final_train_kl"])


def test_curves_that_are_not_comparable_are_refused(tmp_path):
    a = fake_run(tmp_path / "a", [0.3, 0.31])
    with pytest.raises(ValueError, match="SFT policy"):
        sweep.collect({"A": a, "B": fake_run(tmp_path / "b", [0.3, 0.2], sft_key="other")})
    with pytest.raises(ValueError, match="validation situations"):
        sweep.collect({"A": a, "C": fake_run(tmp_path / "c", [0.3, 0.2], n=20)})
    with pytest.raises(ValueError, match="not one of"):
        sweep.collect({"A": a}, chosen="Z")
    with pytest.raises(FileNotFoundError, match="not a GRPO run"):
        sweep.collect({"A": tmp_path / "nowhere"})


def test_sweep_figure_and_table_are_built(tmp_path):
    table = sweep.collect({"A": fake_run(tmp_path / "a", [0.3, 0.31]), "B": fake_run(tmp_path / "b", [0.3, 0.2])})
    res = tmp_path / "results"
    (res / "sweep").mkdir(parents=True)
    table.to_csv(res / "sweep" / "validation_sweep.csv", index=False)
    status = {s.name: s for s in figures.build_all(res, tmp_path / "figs", None)}["validation sweep"]
    assert status.status == "written" and "tables/validation_sweep.md" in status.files
    md = (tmp_path / "figs" / "tables" / "validation_sweep.md").read_text()
    assert "0.310" in md and "0.200" in md


def test_publish_keeps_the_committed_sweep(tmp_path, monkeypatch):
    cfg = load_profile("tiny")
    paths = run_paths(cfg, str(tmp_path / "run"))
    paths.results.mkdir(parents=True)
    (paths.results / "train_log.csv").write_text("step\n1\n")
    dest, figs = tmp_path / "committed", tmp_path / "committed_figs"
    (dest / "sweep").mkdir(parents=True)
    kept = sweep.collect({"A": fake_run(tmp_path / "a", [0.3, 0.31])}).to_csv(index=False)
    (dest / "sweep" / "validation_sweep.csv").write_text(kept)
    (dest / "old.csv").write_text("replaced")
    monkeypatch.setattr(publish, "is_current", lambda *a: True)
    monkeypatch.setattr(publish, "committed_results", lambda profile: dest)
    monkeypatch.setattr(publish, "committed_figures", lambda profile: figs)
    publish.publish(cfg, str(tmp_path / "run"))
    assert (dest / "sweep" / "validation_sweep.csv").read_text() == kept
    assert (dest / "train_log.csv").exists() and not (dest / "old.csv").exists()
    (paths.results / "sweep").mkdir()
    new = sweep.collect({"B": fake_run(tmp_path / "b", [0.3, 0.2])}).to_csv(index=False)
    (paths.results / "sweep" / "validation_sweep.csv").write_text(new)
    publish.publish(cfg, str(tmp_path / "run"))
    assert (dest / "sweep" / "validation_sweep.csv").read_text() == new


def test_script_reports_a_bad_run_folder_in_one_line(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "validation_sweep.py"
    out = subprocess.run(
        [sys.executable, str(script), "--run", f"A={tmp_path / 'nowhere'}", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not a GRPO run folder" in out.stderr and "Traceback" not in out.stderr
