"""Figure functions on small synthetic results; the table writer's numbers equal the inputs; no torch."""

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

from opgrpo_lib import figures, plots
from opgrpo_lib.config import SPLITS


def _metric_rows(system: str, split: str, rel: float) -> list[dict]:
    """The four metrics.csv rows of one system and split, around its relative accuracy ``rel``."""
    base = {"system": system, "split": split, "prompt_style": "default", "n": 100}
    sbert = {"threshold": 0.7, "hit_all": 10, "absolute_accuracy": 0.1, "relative_accuracy": rel}
    cis = {"relative_ci_low": rel - 0.05, "relative_ci_high": rel + 0.05, "absolute_ci_low": 0.05}
    nli = {"accuracy": rel / 2, "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0, "mean_score": 0.3}
    return [
        {**base, "metric": "sbert", **sbert, **cis, "absolute_ci_high": 0.15, "std": 0.2, "std_error": 0.02},
        {**base, "metric": "sbert_summary", "threshold": 0.7, "relative_accuracy": rel - 0.1},
        {**base, "metric": "nli", **nli},
        {**base, "metric": "tokens", "mean_tokens": 300.0, "mean_words": 200.0},
    ]


def _comparison_rows() -> list[dict]:
    """op_grpo against three baselines, all splits and pooled 5p+10p, under both evaluators."""
    return [
        {
            "metric": "sbert",
            "split": split,
            "evaluator": ev,
            "threshold": 0.7,
            "system": "op_grpo",
            "baseline": base,
            "n": 200 if split == "5p+10p" else 300,
            "diff": d,
            "ci_low": d - 0.03,
            "ci_high": d + 0.03,
            "p_value": 0.01,
        }
        for split in ("all", "5p+10p")
        for ev in ("independent", "estimator")
        for base, d in (("sft", -0.04), ("base_implicit", 0.12), ("modplural", 0.2))
    ]


def _estimator_files(root) -> None:
    (root / "estimator").mkdir()
    models, thresholds = ("base", "fine-tuned"), (0.6, 0.7, 0.8)
    cal = pd.DataFrame(
        [{"threshold": t, "precision": 0.8, "recall": 0.6, "model": m} for m in models for t in thresholds]
    )
    cal.to_csv(root / "estimator" / "calibration.csv", index=False)
    (root / "estimator" / "metrics.json").write_text(
        json.dumps({"triplet_accuracy_base": 0.6, "triplet_accuracy_finetuned": 0.8, "heldout_triplets": 50})
    )


def synthetic_results(root):
    rng = np.random.default_rng(0)
    rows = []
    for system in ("op_grpo", "sft", "base_implicit", "modplural"):
        for split in SPLITS:
            rows += _metric_rows(system, split, float(rng.uniform(0.1, 0.8)))
    (root / "eval").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "eval" / "metrics.csv", index=False)
    judge = {
        "status": "ran",
        "model": "judge",
        "systems": {"op_grpo": {a: 4.0 for a in ("helpfulness", "clarity", "factuality", "depth", "engagement")}},
    }
    (root / "eval" / "eval_summary.json").write_text(json.dumps({"judge": judge, "eval_encoder": "x/indep"}))
    pd.DataFrame(_comparison_rows()).to_csv(root / "eval" / "comparisons.csv", index=False)
    steps = np.arange(1, 21)
    log = pd.DataFrame({"step": steps, **{f"op_reward/{c}": rng.uniform(0, 1, 20) for c in figures.COMPONENTS}})
    log.to_csv(root / "train_log.csv", index=False)
    _estimator_files(root)
    return pd.DataFrame(rows)


def test_main_table_numbers_equal_inputs(tmp_path):
    metrics = synthetic_results(tmp_path / "results")
    table = figures.main_coverage_table(metrics)
    assert len(table) == 4 * 7 and list(table["system"].unique())[:2] == ["op_grpo", "sft"]
    files = figures.write_table(table, tmp_path / "t" / "main", "caption")
    back = pd.read_csv(files[0])
    src = metrics[metrics.metric == "sbert"].set_index(["system", "split"])["relative_accuracy"]
    for r in back.itertuples():
        assert r.relative_accuracy == pytest.approx(src[(r.system, r.split)], abs=0)
        nli = metrics[(metrics.metric == "nli") & (metrics.system == r.system) & (metrics.split == r.split)][
            "accuracy"
        ].item()
        assert r.nli_accuracy == pytest.approx(nli, abs=0)
    md = files[1].read_text()
    assert "| op_grpo | 5p |" in md and f"{src[('op_grpo', '5p')]:.3f}" in md
    assert r"\begin{tabular}" in files[2].read_text()


def test_headline_uses_nli_and_lists_paper_claims(tmp_path):
    metrics = synthetic_results(tmp_path / "results")
    head = figures.headline_table(metrics)
    nli = metrics[metrics.metric == "nli"].groupby("system")["accuracy"].mean()
    mp = head[head.baseline == "modplural"].iloc[0]
    assert mp["relative_gain"] == pytest.approx((nli["op_grpo"] - nli["modplural"]) / nli["modplural"])
    assert mp["paper_claim"] == 0.191 and head[head.baseline == "GPT-OSS-20B"]["paper_claim"].item() == 0.374


def test_every_figure_builds_and_missing_inputs_are_named(tmp_path):
    synthetic_results(tmp_path / "results")
    statuses = {s.name: s for s in figures.build_all(tmp_path / "results", tmp_path / "figs", None)}
    for name in (
        "headline comparisons",
        "main coverage table",
        "coverage vs perspectives",
        "training dynamics",
        "similarity estimator",
        "core vs summary",
        "token efficiency",
        "LLM judge",
        "headline gains",
    ):
        assert statuses[name].status == "written", statuses[name]
    assert statuses["reward ablation"].status == "missing inputs" and "ablations" in statuses["reward ablation"].note
    assert (tmp_path / "figs" / "coverage_vs_perspectives.pdf").exists()
    empty = {s.name: s for s in figures.build_all(tmp_path / "nothing", tmp_path / "figs2", None)}
    assert empty["training dynamics"].status == "missing inputs" and "04_grpo" in empty["training dynamics"].note
    assert "05" in empty["main coverage table"].note
    assert "missing inputs" in (tmp_path / "figs2" / "INDEX.md").read_text()


def test_logged_results_appear_as_reported(tmp_path):
    logged = figures.logged_results()
    if logged is None:
        pytest.skip("authors' logged results not available")
    main = figures.logged_main(logged)
    assert set(main["sbert"]) == {"op-sbert-scale70"} and (main["threshold"] == 0.7).all()
    synthetic_results(tmp_path / "results")
    figures.build_all(tmp_path / "results", tmp_path / "figs", logged)
    assert (tmp_path / "figs" / "tables" / "reported_main_sbert.csv").exists()
    rvr = pd.read_csv(tmp_path / "figs" / "tables" / "reported_vs_reproduced.csv")
    assert set(rvr["system"]) == {"op_grpo", "modplural"} and len(rvr) == 14
    row = rvr[(rvr.system == "op_grpo") & (rvr.split == "5p")].iloc[0]
    assert (
        row.reported_relative
        == main[(main.system == "OP-GRPO Qwen2.5-3B im-rewarddown") & (main.split == "5p")]["relative_accuracy"].item()
    )
    assert row.delta_relative == pytest.approx(row.reproduced_relative - row.reported_relative)


def test_figures_step_imports_no_torch(tmp_path):
    synthetic_results(tmp_path / "results")
    code = (
        "import sys; from opgrpo_lib import config, runs, figures, lifecycle; from opgrpo_lib.steps import figures as s; "
        "from pathlib import Path; "
        f"figures.build_all(Path(r'{tmp_path / 'results'}'), Path(r'{tmp_path / 'f'}'), figures.logged_results()); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_figures_are_byte_identical_when_inputs_are(tmp_path):
    """`make figures` on an unchanged checkout must not rewrite the committed files (no timestamps in PDFs)."""
    synthetic_results(tmp_path / "results")
    figures.build_all(tmp_path / "results", tmp_path / "a", None)
    figures.build_all(tmp_path / "results", tmp_path / "b", None)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and any(f.suffix == ".pdf" for f in files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_bug_in_a_figure_is_raised_not_reported_as_missing_inputs(tmp_path, monkeypatch):
    synthetic_results(tmp_path / "results")

    def broken(metrics):
        raise TypeError("a real bug")

    monkeypatch.setattr(figures, "fig_tokens", broken)
    with pytest.raises(TypeError, match="a real bug"):
        figures.build_all(tmp_path / "results", tmp_path / "f", None)


def test_committed_figures_are_up_to_date(tmp_path):
    """The committed figures/cpu are what `make figures` builds from the committed results/cpu."""
    from opgrpo_lib.paths import REPO_ROOT

    results, committed = REPO_ROOT / "results" / "cpu", REPO_ROOT / "figures" / "cpu"
    if not results.is_dir():
        pytest.skip("no committed cpu results")
    figures.build_all(results, tmp_path / "f", figures.logged_results())
    built = sorted(p.relative_to(tmp_path / "f") for p in (tmp_path / "f").rglob("*") if p.is_file())
    compared = [f for f in built if (committed / f).exists()]  # tables copying the authors' logs are not committed
    assert len(compared) > 5
    for f in compared:
        assert (committed / f).read_bytes() == (tmp_path / "f" / f).read_bytes(), f"{f}: run `make figures`"


def test_headline_never_puts_an_sbert_ratio_beside_the_papers_nli_claim(tmp_path):
    metrics = synthetic_results(tmp_path / "results")
    head = figures.headline_table(metrics[metrics.metric != "nli"])
    mp = head[head.baseline == "modplural"].iloc[0]
    assert mp["metric"] == "SBERT relative accuracy" and pd.isna(mp["paper_claim"])
    assert "not comparable" in mp["paper_claim_note"]


def test_headline_figure_draws_every_comparison_with_its_ci_in_the_systems_colours(tmp_path):
    synthetic_results(tmp_path / "results")
    comps = pd.read_csv(tmp_path / "results" / "eval" / "comparisons.csv")
    fig = figures.fig_comparisons(comps, {"eval_encoder": "x/indep"})
    axes = fig.axes
    assert [a.get_title().split("\n")[0] for a in axes] == [
        "SBERT @ 0.7: independent evaluator",
        "SBERT @ 0.7: the reward's own estimator",
    ]
    assert "indep" in axes[0].get_title()
    for ax, ev in zip(axes, ("independent", "estimator")):
        labels = [t.get_text() for t in ax.texts]
        for r in comps[comps.evaluator == ev].itertuples():
            assert f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" in labels
        colours = {
            tuple(c.get_color()) if not isinstance(c.get_color(), str) else c.get_color()
            for c in ax.lines
            if c.get_marker() == "o"
        }
        assert {figures.SYSTEM_COLORS[b].lower() for b in ("sft", "base_implicit", "modplural")} <= {
            matplotlib.colors.to_hex(c) for c in colours
        }
    assert plots.STYLE["font.size"] >= 9 and fig.get_size_inches()[0] <= 12


def test_one_colour_per_system_in_every_figure(tmp_path):
    metrics = synthetic_results(tmp_path / "results")
    table = figures.main_coverage_table(metrics)
    cov = figures.fig_coverage_vs_perspectives(table)
    line_colours = {ln.get_label(): matplotlib.colors.to_hex(ln.get_color()) for ln in cov.axes[0].lines}
    tok = figures.fig_tokens(metrics)
    bar_colours = {
        c.get_label(): matplotlib.colors.to_hex(c.patches[0].get_facecolor()) for c in tok.axes[0].containers
    }
    for system in ("op_grpo", "sft", "base_implicit", "modplural"):
        assert line_colours[system] == bar_colours[system] == figures.SYSTEM_COLORS[system].lower()
    # legends sit outside the axes (below them), never over the data
    for fig in (cov, tok):
        legend = fig.axes[0].get_legend()
        fig.canvas.draw()
        assert legend.get_window_extent().y1 <= fig.axes[0].get_window_extent().y0 + 1


def test_no_twin_axes_in_training_figures(tmp_path):
    synthetic_results(tmp_path / "results")
    val = pd.DataFrame(
        {
            "step": [0, 8, 16],
            "n": 40,
            "sbert_relative_accuracy": [0.302, 0.306, 0.3],
            "coverage_ladder": [0.95, 1.05, 1.1],
            "mean_tokens": [191.0, 203.0, 210.0],
            "clipped_ratio": [0.0, 0.0, 0.05],
            "valid_format_rate": [1.0, 1.0, 0.97],
        }
    )
    fig = figures.fig_validation_curve(val)
    assert len(fig.axes) == 4 and all(len(a.lines) >= 1 for a in fig.axes)
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= 0.1 - 1e-9, "a 0.004 change must not look steep"
    log = pd.read_csv(tmp_path / "results" / "train_log.csv")
    assert len(figures.fig_training_dynamics(log).axes) == 6


def _step_cells():
    """Authors' cells: two runs x two splits at the step-ablation setting, plus cells the panel must leave out."""
    evaluator = "paraphrase-mpnet-base-v2"
    runs = [("Qwen2.5-1.5B", "5p", 0.4), ("Qwen2.5-1.5B", "10p", 0.3), ("Llama-3.2-3B", "5p", 0.6)]
    runs.append(("Llama-3.2-3B", "10p", 0.5))
    rows = [
        (f"OP-GRPO {model} step {step}", f"{step}.0", split, evaluator, 0.75, base + step / 1000)
        for model, split, base in runs
        for step in (0, 30, 60)
    ]
    rows.append(("OP-GRPO Llama-3.2-3B step 0", "0.0", "5p", evaluator, 0.7, 0.9))  # another threshold
    rows.append(("OP-GRPO Qwen2.5-3B im", "", "5p", evaluator, 0.75, 0.1))  # not a step cell
    return pd.DataFrame(rows, columns=["system", "rl_step", "split", "evaluator", "threshold", "relative_accuracy"])


def test_training_dynamics_draws_the_authors_step_cells_as_authors_rl_steps_selects_them(tmp_path):
    from opgrpo_lib import figures_authors

    synthetic_results(tmp_path / "results")
    log = pd.read_csv(tmp_path / "results" / "train_log.csv")
    cells = _step_cells()
    ax = figures.fig_training_dynamics(log, cells).axes[5]
    drawn = {ln.get_label(): ln for ln in ax.lines}
    colours = {model: colour for model, _, colour in figures_authors.STEP_RUNS}
    steps = figures_authors.step_cells(cells)
    assert len(drawn) == 4 and len(steps) == 12  # neither the 0.70 cell nor the non-step cell
    for label, line in drawn.items():
        model, split = label.split(" ")
        want = figures_authors.step_run(steps, model, split)
        assert list(line.get_xdata()) == [0, 30, 60] and list(line.get_ydata()) == list(want["relative_accuracy"])
        assert matplotlib.colors.to_hex(line.get_color()) == colours[model].lower()
    assert "paraphrase-mpnet-base-v2 @ 0.75" in ax.get_title()
    # the figure step reads the same cells from results/<profile>/authors/cells.csv
    (tmp_path / "results" / "authors").mkdir()
    cells.to_csv(tmp_path / "results" / "authors" / "cells.csv", index=False)
    inp = figures.Inputs.load(tmp_path / "results", None)
    assert len(figures_authors.step_cells(inp.authors_cells)) == 12
    written = dict(figures.FIGURES)["training dynamics"](inp, tmp_path / "figs")
    assert [f.name for f in written] == ["training_dynamics.png", "training_dynamics.pdf"]


def test_training_dynamics_says_which_step_makes_the_authors_cells(tmp_path):
    synthetic_results(tmp_path / "results")
    log = pd.read_csv(tmp_path / "results" / "train_log.csv")
    for cells, needle in ((None, "(run notebook 08_authors)"), (_step_cells().iloc[-1:], "RL-step ablation cells")):
        ax = figures.fig_training_dynamics(log, cells).axes[5]
        text = " ".join(t.get_text() for t in ax.texts)
        assert not ax.lines and "results/authors/cells.csv" in text and needle in text
    checkpoints = pd.DataFrame({"step": [0, 8], "split": "5p", "relative_accuracy": [0.3, 0.4]})
    ax = figures.fig_training_dynamics(log, None, checkpoints).axes[5]
    assert [ln.get_label() for ln in ax.lines] == ["ours (mean over splits)"] and "08_authors" in ax.get_title()


def test_figures_come_from_the_run_when_it_has_results_else_the_committed_ones(tmp_path, monkeypatch):
    from opgrpo_lib.config import load_profile
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.steps import figures as figures_step

    repo = tmp_path / "repo"
    synthetic_results(repo / "results" / "cpu")
    monkeypatch.setattr(figures, "REPO_ROOT", repo)
    cfg = load_profile("cpu")
    paths = run_paths(cfg, tmp_path / "run")
    source, note = figures.results_source(cfg, paths)
    assert source == repo / "results" / "cpu" and "committed results/cpu" in note
    out = figures_step.run(cfg, paths)
    assert out["source"] == str(repo / "results" / "cpu") and (tmp_path / "run" / "figures" / "INDEX.md").exists()
    shown = figures.gallery(out["out_dir"])
    assert shown[0][1].name == "headline_comparisons.png" and any(p.suffix == ".md" for _, p in shown)
    assert any("Paired comparisons" in caption for caption, _ in shown)
    synthetic_results(tmp_path / "run" / "results")  # the run has evaluated: its own results win
    source, note = figures.results_source(cfg, paths)
    assert source == tmp_path / "run" / "results" and "the run's results" in note
    paper = load_profile("paper")  # nothing committed for paper (a fresh GPU runtime): the committed cpu numbers
    source, note = figures.results_source(paper, run_paths(paper, tmp_path / "run-paper"))
    assert source == repo / "results" / "cpu" and "none are committed for paper" in note
