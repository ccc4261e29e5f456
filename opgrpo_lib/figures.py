"""Step 07: every figure and table as a pure function of files under ``results/<profile>/`` (no torch).

Each ``fig_*`` / ``table_*`` takes frames or dicts and returns a matplotlib Figure or a DataFrame; :func:`run`
loads the inputs, saves PNG + PDF and CSV + Markdown + LaTeX under ``figures/<profile>/`` and writes an index
that says, for every figure whose inputs are missing, which step produces them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import figures_authors, figures_gpu  # noqa: E402
from .config import REPO_ROOT, SPLITS  # noqa: E402
from .plots import (  # noqa: E402
    LOGGED_AS,
    OTHER_COLORS,
    SYSTEM_COLORS,
    save_figure,
    styled,
    system_color,
    write_table,
)
from .reward import COMPONENTS  # noqa: E402
from .sweep import best_points  # noqa: E402

PAPER_CLAIMS = {"GPT-OSS-20B": 0.374, "ModPlural": 0.191}  # relative NLI Accuracy@0.33 gains (abstract)
ENV_LOGGED = "OPGRPO_LOGGED_RESULTS"
SYSTEM_ORDER = ["op_grpo", "sft", "base_implicit", "base_explicit", "modplural"]
AUTHORS_CELLS, AUTHORS_STEP = f"results/{figures_authors.CELLS}", "notebook 08_authors"
AUTHORS = f"{AUTHORS_CELLS}: run {AUTHORS_STEP}"


def _legend_below(ax: Any, ncol: int = 2, **kwargs: Any) -> None:
    """A legend under the axes, never over the data (constrained layout makes room for it)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, **kwargs)


def _min_span(ax: Any, span: float, lo: float | None = None, hi: float | None = None) -> None:
    """Widen the y-range to at least ``span`` so that noise-sized changes do not look steep."""
    a, b = ax.get_ylim()
    if b - a < span:
        mid = (a + b) / 2
        a, b = mid - span / 2, mid + span / 2
    ax.set_ylim(a if lo is None else max(lo, a), b if hi is None else min(hi, b))


class MissingInputs(Exception):
    """The inputs of a figure do not exist yet; the message says which step produces them."""


# ---------------------------------------------------------------- tables
def main_coverage_table(metrics: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """One row per (system, split): SBERT relative/absolute accuracy with CIs and NLI Accuracy@0.33 if present."""
    sb = metrics[metrics["metric"] == "sbert"]
    if "prompt_style" in sb:
        sb = sb[sb["prompt_style"] == "default"]
    if threshold is None and len(sb):
        threshold = float(sb["threshold"].min())
    sb = sb[np.isclose(sb["threshold"], threshold)] if len(sb) else sb
    cols = [
        "system",
        "split",
        "n",
        "relative_accuracy",
        "relative_ci_low",
        "relative_ci_high",
        "absolute_accuracy",
        "absolute_ci_low",
        "absolute_ci_high",
    ]
    out = sb[cols].copy()
    nli = metrics[metrics["metric"] == "nli"]
    if len(nli):
        if "prompt_style" in nli:
            nli = nli[nli["prompt_style"] == "default"]
        out = out.merge(
            nli[["system", "split", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_score"]].rename(
                columns={
                    "accuracy": "nli_accuracy",
                    "accuracy_ci_low": "nli_ci_low",
                    "accuracy_ci_high": "nli_ci_high",
                    "mean_score": "nli_mean_score",
                }
            ),
            on=["system", "split"],
            how="left",
        )
    out["split"] = pd.Categorical(out["split"], [s for s in SPLITS if s in set(out["split"])], ordered=True)
    order = [s for s in SYSTEM_ORDER if s in set(out["system"])] + sorted(set(out["system"]) - set(SYSTEM_ORDER))
    out["system"] = pd.Categorical(out["system"], order, ordered=True)
    out = out.sort_values(["system", "split"]).reset_index(drop=True)
    out.attrs["threshold"] = threshold
    return out


def logged_main(logged: pd.DataFrame | None) -> pd.DataFrame:
    """The authors' main logged setting (fine-tuned scale-70 SBERT at 0.70), first content version per row."""
    if logged is None or logged.empty:
        return pd.DataFrame()
    main = logged[(logged["sbert"] == "op-sbert-scale70") & np.isclose(logged["threshold"], 0.7)]
    main = main[main["rl_step"].astype(str) == ""]
    return main.drop_duplicates(["system", "split"], keep="first")


# Our system → the authors' logged system it reproduces (main logged setting).
REPORTED_COUNTERPART = {"op_grpo": "OP-GRPO Qwen2.5-3B im-rewarddown", "modplural": "ModPlural raw"}


def reported_vs_reproduced(table: pd.DataFrame, logged: pd.DataFrame | None) -> pd.DataFrame:
    """Per split: the authors' logged SBERT relative/absolute accuracy ("reported") next to ours ("reproduced")
    and the delta. The evaluators differ (theirs: the reward's own scale-70 SBERT @ 0.70), which the caption says."""
    main = logged_main(logged)
    if main.empty:
        raise MissingInputs("the authors' logged results are not available (../shared/data/authors-logged-results)")
    rows = []
    for ours, theirs in REPORTED_COUNTERPART.items():
        mine = table[table["system"] == ours].set_index("split")
        rep = main[main["system"] == theirs].set_index("split")
        for split in [s for s in SPLITS if s in mine.index and s in rep.index]:
            r, m = rep.loc[split], mine.loc[split]
            rows.append(
                {
                    "system": ours,
                    "reported_as": theirs,
                    "split": split,
                    "reported_relative": float(r["relative_accuracy"]),
                    "reproduced_relative": float(m["relative_accuracy"]),
                    "delta_relative": float(m["relative_accuracy"]) - float(r["relative_accuracy"]),
                    "reported_absolute": float(r["absolute_accuracy"]),
                    "reproduced_absolute": float(m["absolute_accuracy"]),
                    "delta_absolute": float(m["absolute_accuracy"]) - float(r["absolute_accuracy"]),
                }
            )
    if not rows:
        raise MissingInputs("no reproduced system with a logged counterpart (op_grpo, modplural)")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures
@styled
def fig_coverage_vs_perspectives(table: pd.DataFrame, logged: pd.DataFrame | None = None) -> plt.Figure:
    """Relative SBERT accuracy per split (5p → gt10p) for each system; the authors' logged curves beside them."""
    panels = 2 if logged is not None and not logged.empty else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.4), squeeze=False, sharey=True, layout="constrained")
    ax = axes[0][0]
    for system, part in table.groupby("system", observed=True, sort=False):
        part = part.sort_values("split")
        x = [list(SPLITS).index(s) for s in part["split"]]
        color = system_color(str(system))
        ax.plot(x, part["relative_accuracy"], marker="o", color=color, label=str(system))
        ax.fill_between(x, part["relative_ci_low"], part["relative_ci_high"], color=color, alpha=0.12, linewidth=0)
    ax.set_title(f"reproduced: SBERT @ {table.attrs.get('threshold', '')}, 95 % CI bands")
    ax.set_ylabel("relative accuracy\n(matched / reference perspectives)")
    _legend_below(ax)
    if panels == 2:
        ax2 = axes[0][1]
        keep = logged[logged["system_family"].isin(["op-grpo", "modplural", "prompting-baseline", "base"])]
        others = 0
        for system, part in keep.groupby("system", sort=False):
            if part["split"].nunique() < 3:
                continue
            part = part.set_index("split").reindex([s for s in SPLITS if s in set(part["split"])])
            x = [list(SPLITS).index(s) for s in part.index]
            if system in LOGGED_AS:
                ax2.plot(
                    x,
                    part["relative_accuracy"],
                    marker=".",
                    linestyle="--",
                    color=system_color(LOGGED_AS[system]),
                    label=f"{system} (= {LOGGED_AS[system]})",
                )
            else:  # other variants: context, one legend entry for all of them
                ax2.plot(
                    x,
                    part["relative_accuracy"],
                    color="#BBBBBB",
                    linewidth=1,
                    zorder=1,
                    label="other logged systems" if not others else None,
                )
                others += 1
        ax2.set_title("reported: the authors' logs (their scale-70 SBERT @ 0.70)")
        _legend_below(ax2, ncol=1)
    for a in axes[0]:
        a.set_xticks(range(len(SPLITS)), SPLITS)
        a.set_xlabel("reference perspectives per situation (split)")
    fig.suptitle("Coverage vs number of perspectives (higher = more of the reference perspectives covered)")
    return fig


def _validation_panels(axes: Any, validation: pd.DataFrame) -> None:
    """Validation curve (same held-out situations, greedy, every K steps), one quantity per axis: coverage under the
    independent evaluator, the reward's own coverage ladder, output length, clipped and valid-layout rates."""
    v = validation.sort_values("step")
    n = int(v["n"].iloc[0])
    panels = [
        ("sbert_relative_accuracy", f"validation: independent SBERT\n(n = {n}, greedy)", 0.1, (0, 1)),
        ("coverage_ladder", "validation: reward's coverage ladder", 1.0, (0, 5)),
        ("mean_tokens", "validation: mean output tokens", 50.0, (0, None)),
    ]
    for ax, (col, title, span, (lo, hi)) in zip(axes, panels):
        ax.plot(v["step"], v[col], marker="o", color="black")
        ax.set_title(title)
        _min_span(ax, span, lo, hi)
    ax = axes[3]
    ax.plot(v["step"], v["clipped_ratio"], marker="^", color="#CC79A7", label="clipped")
    ax.plot(v["step"], v["valid_format_rate"], marker="v", color="#009E73", label="valid layout")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("validation: share of outputs")
    _legend_below(ax, ncol=2)
    for a in axes:
        a.set_xlabel("GRPO step")


def _reward_panels(axes: list[Any], train_log: pd.DataFrame) -> None:
    """The total reward and each reward term per GRPO step (faint) with a rolling mean of 5 (bold), one per axis;
    axes left over are switched off."""
    comps = [c for c in COMPONENTS if f"op_reward/{c}" in train_log]
    comps = ["total"] + [c for c in comps if c != "total"] if "total" in comps else comps
    color = SYSTEM_COLORS["op_grpo"]
    for ax, c in zip(axes, comps):
        y = train_log[f"op_reward/{c}"]
        ax.plot(
            train_log["step"],
            y,
            alpha=0.4 if len(y) >= 5 else 1.0,
            marker="." if len(y) < 30 else None,
            color=color,
            label="per step",
        )
        if len(y) >= 5:
            ax.plot(
                train_log["step"],
                y.rolling(5, min_periods=1).mean(),
                linewidth=2,
                color=color,
                label="rolling mean of 5",
            )
        ax.set_title("total reward" if c == "total" else f"reward term: {c}")
        ax.set_xlabel("GRPO step")
        _min_span(ax, 0.2)
    for ax in axes[len(comps) :]:
        ax.axis("off")


def _authors_steps(ax: Any, cells: pd.DataFrame | None) -> str | None:
    """The authors' RL-step ablation, as step 08 re-derived it: one colour and marker per run (as in
    ``authors_rl_steps.png``), solid 5p, dashed 10p. None when drawn, else what is missing and which step makes it."""
    steps = figures_authors.step_cells(cells) if cells is not None else pd.DataFrame()
    if steps.empty:
        if cells is None:
            return f"the authors' RL-step ablation needs\n{AUTHORS_CELLS}\n(run {AUTHORS_STEP})"
        return f"{AUTHORS_CELLS} has no\nRL-step ablation cells\n(rerun {AUTHORS_STEP})"
    for model, marker, color in figures_authors.STEP_RUNS:
        for split, style in (("5p", "-"), ("10p", "--")):
            run = figures_authors.step_run(steps, model, split)
            if not run.empty:
                y = run["relative_accuracy"].astype(float)
                ax.plot(run["step"], y, marker=marker, linestyle=style, color=color, label=f"{model} {split}")
    return None


def _rl_step_panel(ax: Any, cells: pd.DataFrame | None, checkpoints: pd.DataFrame | None) -> None:
    """Coverage vs RL step: our saved checkpoints (mean over splits) and the authors' step ablation; what is
    missing is said in the panel."""
    ours = checkpoints is not None and not checkpoints.empty
    if ours:
        mean = checkpoints.groupby("step")["relative_accuracy"].mean()
        color = SYSTEM_COLORS["op_grpo"]
        ax.plot(mean.index, mean.values, marker="s", color=color, linewidth=2, label="ours (mean over splits)")
    missing = _authors_steps(ax, cells)
    if missing is None:
        evaluator, threshold = figures_authors.STEP_SETTING
        ax.set_title(f"coverage vs RL step\n(authors: {evaluator} @ {threshold})")
    elif ours:
        ax.set_title(f"coverage vs RL step\n{missing}", fontsize=9)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"coverage vs RL step\n\n{missing}", ha="center", va="center")
        return
    ax.set_xlabel("RL step")
    ax.set_ylabel("SBERT relative accuracy")
    ax.grid(alpha=0.3)
    title = None if missing else "ours and the authors' runs" if ours else "authors' runs"
    _legend_below(ax, ncol=2, title=title)


@styled
def fig_training_dynamics(
    train_log: pd.DataFrame, authors_cells: pd.DataFrame | None = None, checkpoints: pd.DataFrame | None = None
) -> plt.Figure:
    """Each reward component per GRPO step (training prompts differ from step to step: noisy by design) and coverage
    vs RL step: our saved checkpoints and the authors' step ablation from ``results/<profile>/authors/cells.csv``."""
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.6), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    _reward_panels(flat[:5], train_log)
    _rl_step_panel(flat[5], authors_cells, checkpoints)
    note = "faint = per step, bold = rolling mean of 5" if len(train_log) >= 5 else "one point per step"
    fig.suptitle(f"GRPO training: reward terms on the training batches (each step sees new prompts; {note})")
    return fig


@styled
def fig_validation_curve(validation: pd.DataFrame) -> plt.Figure:
    """The validation curve GRPO settings are chosen on: the same held-out situations at every point, one quantity
    per axis (no twin axes)."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6), layout="constrained")
    _validation_panels(list(axes), validation)
    fig.suptitle("Validation during GRPO (same held-out situations at every point)")
    return fig


@styled
def fig_validation_sweep(table: pd.DataFrame) -> plt.Figure:
    """Every tried GRPO setting's validation curve: the independent score's gain over step 0 (paired 95 % CI, what
    the choice reads), the reward's coverage ladder and the output length vs step."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.4), layout="constrained")
    settings = list(table.groupby("setting", sort=False))
    for i, (name, part) in enumerate(settings):
        part = part.sort_values("step")
        chosen = bool(part["chosen"].iloc[0])
        # the chosen setting is the op_grpo system of every other figure; the rest avoid the systems' colours
        color = SYSTEM_COLORS["op_grpo"] if chosen else OTHER_COLORS[[2, 0, 3, 1][i % 4]]
        style = {
            "linewidth": 3 if chosen else 1.3,
            "marker": "o",
            "color": color,
            "zorder": 3 if chosen else 2,
            "label": name + (" (chosen)" if chosen else ""),
            "linestyle": "-" if chosen else ["-", "--"][i % 2],
        }
        step = part["step"].to_numpy(dtype=float)
        ci = part.reindex(columns=["vs_start", "vs_start_ci_low", "vs_start_ci_high"])  # none at step 0
        gain = ci["vs_start"].fillna(0.0)
        low, high = gain - ci["vs_start_ci_low"].fillna(gain), ci["vs_start_ci_high"].fillna(gain) - gain
        nudge = (i - (len(settings) - 1) / 2) * 0.25  # side by side at each step, so the CIs do not hide each other
        axes[0].errorbar(step + nudge, gain, yerr=[low, high], capsize=3, **style)
        axes[1].plot(step, part["coverage_ladder"], **style)
        axes[2].plot(step, part["mean_tokens"], **style)
    axes[0].axhline(0, color="#999999", linewidth=0.8, zorder=1)
    gain_title = "independent SBERT gain over step 0\n(validation, paired 95 % CI)"
    titles = (gain_title, "reward's coverage ladder", "mean output tokens")
    for ax, title, span in zip(axes, titles, (0.1, 1.0, 50.0)):
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        _min_span(ax, span)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3)
    fig.suptitle("GRPO settings tried on the validation carve (each arm's ladder is its own reward's)")
    return fig


def _sweep_outputs(table: pd.DataFrame, out: Path) -> list[Path]:
    files = save_figure(fig_validation_sweep(table), out / "validation_sweep")
    return files + write_table(
        best_points(table),
        out / "tables" / "validation_sweep",
        "GRPO settings tried on the validation carve (final and best point per setting; "
        "independent SBERT relative accuracy)",
    )


@styled
def fig_estimator(calibration: pd.DataFrame, metrics: dict[str, Any]) -> plt.Figure:
    """Base vs fine-tuned estimator: alignment precision/recall across thresholds, and triplet accuracy."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    colors = {"base": "#999999", "fine-tuned": "#000000"}  # not a system: none of the systems' colours
    for i, (model, part) in enumerate(calibration.groupby("model", sort=False)):
        color = colors.get(str(model), OTHER_COLORS[i % 4])
        axes[0].plot(part["threshold"], part["precision"], marker="o", color=color, label=f"precision, {model}")
        axes[0].plot(
            part["threshold"], part["recall"], marker="s", linestyle="--", color=color, label=f"recall, {model}"
        )
    axes[0].set_xlabel("cosine threshold")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("held-out alignment (same-name pairs)")
    _legend_below(axes[0])
    accs = [metrics.get("triplet_accuracy_base"), metrics.get("triplet_accuracy_finetuned")]
    axes[1].bar(["base", "fine-tuned"], [a or 0 for a in accs], color=[colors["base"], colors["fine-tuned"]])
    for i, v in enumerate(accs):
        if v is not None:
            axes[1].text(i, v + 0.02, f"{v:.3f}", ha="center")
    axes[1].set_ylim(0, 1.1)
    axes[1].set_title(f"held-out triplet accuracy\n(n = {metrics.get('heldout_triplets')})")
    fig.suptitle("Similarity estimator (the reward's encoder): base vs fine-tuned")
    return fig


def _system_bars(ax: Any, pivot: pd.DataFrame) -> None:
    """Grouped bars, one colour per system (the column order of ``pivot``)."""
    systems = list(pivot.columns)
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(pivot.index))
    for i, system in enumerate(systems):
        ax.bar(
            x + (i - (len(systems) - 1) / 2) * width,
            pivot[system].to_numpy(dtype=float),
            width,
            color=system_color(str(system)),
            label=str(system),
        )
    ax.set_xticks(x, [str(i) for i in pivot.index])


def _ordered(systems: Any) -> list[str]:
    systems = [str(s) for s in systems]
    return [s for s in SYSTEM_ORDER if s in systems] + sorted(set(systems) - set(SYSTEM_ORDER))


@styled
def fig_tokens(metrics: pd.DataFrame) -> plt.Figure:
    tok = metrics[(metrics["metric"] == "tokens")]
    if "prompt_style" in tok:
        tok = tok[tok["prompt_style"] == "default"]
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    pivot = tok.pivot_table(index="split", columns="system", values="mean_tokens", observed=True)
    pivot = pivot.reindex([s for s in SPLITS if s in pivot.index])[_ordered(pivot.columns)]
    _system_bars(ax, pivot)
    ax.set_xlabel("reference perspectives per situation (split)")
    ax.set_ylabel("mean tokens per output")
    ax.set_title("Token efficiency: output length per system (lower = more concise)")
    _legend_below(ax, ncol=min(len(pivot.columns), 5), title=None)
    ax.legend_.set_bbox_to_anchor((0.5, -0.14))
    return fig


def core_vs_summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    sb = metrics[metrics["metric"].isin(["sbert", "sbert_summary"])]
    if "prompt_style" in sb:
        sb = sb[sb["prompt_style"] == "default"]
    both = sb.pivot_table(index=["system", "split", "threshold"], columns="metric", values="relative_accuracy")
    both = both.dropna().reset_index()
    if both.empty:
        raise MissingInputs("no system has both core and summary text scored (needs valid two-block outputs)")
    return both.rename(columns={"sbert": "core (or full text)", "sbert_summary": "summary"})


def headline_table(metrics: pd.DataFrame, ours: str = "op_grpo") -> pd.DataFrame:
    """Relative gains (ours − baseline) / baseline, averaged over splits, NLI when measured else SBERT, next to the
    paper's claims."""
    from .stats import relative_gain

    nli = metrics[metrics["metric"] == "nli"]
    if len(nli):
        col, metric, name = "accuracy", nli, "NLI Accuracy@0.33"
    else:
        sb = metrics[metrics["metric"] == "sbert"]
        col, metric, name = (
            "relative_accuracy",
            sb[np.isclose(sb["threshold"], sb["threshold"].min())],
            "SBERT relative accuracy",
        )
    if "prompt_style" in metric:
        metric = metric[metric["prompt_style"] == "default"]
    means = metric.groupby("system")[col].mean()
    if ours not in means:
        raise MissingInputs(f"no {ours} results (run notebooks 04–06)")
    rows = []
    for base in means.index.drop(ours):
        claim, note = None, ""
        if base == "modplural" and len(nli):
            claim, note = PAPER_CLAIMS["ModPlural"], "vs ModPlural (NLI)"
        elif base == "modplural":  # an SBERT ratio is not the paper's NLI number: never side by side
            note = "the paper's +19.1 % is NLI Accuracy@0.33; this row is SBERT, not comparable"
        rows.append(
            {
                "baseline": base,
                "metric": name,
                "ours": means[ours],
                "baseline_value": means[base],
                "relative_gain": relative_gain(means[ours], means[base]),
                "paper_claim": claim,
                "paper_claim_note": note,
            }
        )
    rows.append(
        {
            "baseline": "GPT-OSS-20B",
            "metric": "NLI Accuracy@0.33",
            "ours": None,
            "baseline_value": None,
            "relative_gain": None,
            "paper_claim": PAPER_CLAIMS["GPT-OSS-20B"],
            "paper_claim_note": "not reproduced: GPT-OSS-20B outputs/NLI are not available",
        }
    )
    return pd.DataFrame(rows)


@styled
def fig_judge(judge: dict[str, Any]) -> plt.Figure:
    if judge.get("status") == "failed":  # every request failed: a note, not an empty panel
        raise MissingInputs(f"LLM {judge.get('reason', 'judge: 0 rows scored')}")
    systems = {s: v for s, v in (judge.get("systems") or {}).items() if v.get("parsed", 1)}
    if not systems:
        raise MissingInputs("LLM judge did not run (set eval.judge.enabled and an API key; notebook 06)")
    aspects = ["helpfulness", "clarity", "factuality", "depth", "engagement"]
    df = pd.DataFrame({s: [v.get(a) for a in aspects] for s, v in systems.items()}, index=aspects)
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    _system_bars(ax, df[_ordered(df.columns)])
    ax.set_ylim(1, 5)
    ax.set_ylabel("mean score (1-5)")
    ax.set_title(f"LLM judge ({judge.get('model')}): response quality per aspect")
    _legend_below(ax, ncol=min(len(df.columns), 5))
    ax.legend_.set_bbox_to_anchor((0.5, -0.1))
    return fig


@styled
def fig_reward_ablation(logs: dict[str, pd.DataFrame]) -> plt.Figure:
    if not logs:
        raise MissingInputs("no reward-ablation runs under results/<profile>/ablations/<name>/train_log.csv")
    fig, ax = plt.subplots(figsize=(7, 4.4), layout="constrained")
    for i, (name, log) in enumerate(logs.items()):
        ax.plot(
            log["step"],
            log["op_reward/coverage"].rolling(5, min_periods=1).mean(),
            label=name,
            color=OTHER_COLORS[i % 4] if i else SYSTEM_COLORS["op_grpo"],
        )
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("coverage ladder (rolling mean)")
    ax.set_title("Reward ablation runs")
    _legend_below(ax)
    return fig


EVALUATOR_NAMES = {"independent": "independent evaluator", "estimator": "the reward's own estimator"}


def _comparison_panels(c: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, evaluator) of each panel: SBERT independent, SBERT with the reward's estimator, NLI, when present."""
    return [
        (m, e)
        for m, e in (("sbert", "independent"), ("sbert", "estimator"))
        if ((c.metric == m) & (c.evaluator == e)).any()
    ] + [("nli", "")] * bool((c.metric == "nli").any())


def _comparison_point(ax: Any, r: pd.Series, y: float, color: str, filled: bool) -> None:
    """One difference with its CI and its value, the label on the side away from zero."""
    ax.errorbar(
        r["diff"],
        y,
        xerr=[[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]],
        fmt="o",
        color=color,
        mfc=color if filled else "white",
        markersize=8,
        capsize=4,
        linewidth=2,
    )
    outward = r["diff"] >= 0  # the label goes away from zero: it never crosses the zero line
    ax.annotate(
        f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
        (r["ci_high"] if outward else r["ci_low"], y),
        xytext=(6 if outward else -6, 0),
        textcoords="offset points",
        ha="left" if outward else "right",
        va="center",
        fontsize=9 if filled else 8,
        color="#222222" if filled else "#666666",
    )


def _comparison_rows(ax: Any, part: pd.DataFrame, baselines: list[str], headline_pool: str) -> dict[str, int]:
    """Every baseline's headline-pool point (filled) and all-splits point (hollow, left out where every evaluated
    situation is in the pool: it would repeat the filled one); {pool: situations}."""
    sizes: dict[str, int] = {}
    for y, base in enumerate(baselines):
        rows = [part[(part.baseline == base) & (part.split == pool)] for pool in dict.fromkeys((headline_pool, "all"))]
        rows = [r.iloc[0] for r in rows if not r.empty]
        if len(rows) == 2 and rows[0]["split"] == headline_pool and int(rows[1]["n"]) == int(rows[0]["n"]):
            rows = rows[:1]
        for r in rows:
            filled = r["split"] == headline_pool
            dy = 0.0 if len(rows) == 1 else (0.12 if filled else -0.18)
            _comparison_point(ax, r, y + dy, system_color(base), filled)
            sizes[str(r["split"])] = int(r["n"])
    return sizes


def _comparison_axis(ax: Any, part: pd.DataFrame, panel: tuple[str, str], summary: dict[str, Any], ref: str) -> None:
    """Zero line, an x-range with room for the labels on both sides, the evaluator as title."""
    metric, evaluator = panel
    ax.axvline(0, color="black", linewidth=1)
    lo = min(part["ci_low"].min(), 0) if len(part) else -0.1
    hi = max(part["ci_high"].max(), 0) if len(part) else 0.1
    pad = 0.75 * (hi - lo) + 0.05  # room for the labels on both sides
    ax.set_xlim(lo - (pad if lo < 0 else 0.05), hi + pad)
    if metric == "nli":
        name, value = "NLI Accuracy@0.33", "NLI accuracy difference"
    else:
        model = summary.get("eval_encoder" if evaluator == "independent" else "reward_estimator", "")
        thr = part["threshold"].iloc[0] if "threshold" in part and len(part) else ""
        name = f"SBERT @ {thr}: {EVALUATOR_NAMES.get(evaluator, evaluator)}"
        name += f"\n{model.split('/')[-1]}" if model else ""
        value = "difference in relative accuracy"
    ax.set_title(name)
    ax.set_xlabel(f"{ref} − baseline ({value})\n← baseline better | {ref} better →")


@styled
def fig_comparisons(comparisons: pd.DataFrame, summary: dict[str, Any] | None = None) -> plt.Figure:
    """The headline: reference system − each baseline, paired over the same situations, with the paired-bootstrap
    95 % CI, one panel per evaluator (SBERT independent, SBERT with the reward's estimator, NLI when measured).
    Filled: the pooled 5p+10p situations (``all`` where there is no such pool); hollow: every evaluated split."""
    summary = summary or {}
    c = comparisons.copy()
    c["evaluator"] = c.get("evaluator", pd.Series(index=c.index, dtype=object)).fillna("")
    panels = _comparison_panels(c)
    if not panels:
        raise MissingInputs("results/eval/comparisons.csv has no SBERT or NLI comparison: run notebook 06")
    headline_pool = "5p+10p" if (c["split"] == "5p+10p").any() else "all"
    ref = str(c["system"].iloc[0])
    baselines = _ordered(set(c["baseline"]))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(min(5.2 * len(panels), 12.5), 1.5 + 1.05 * len(baselines)),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    sizes: dict[str, int] = {}
    for ax, (metric, evaluator) in zip(axes[0], panels):
        part = c[(c.metric == metric) & (c.evaluator == evaluator)]
        sizes.update(_comparison_rows(ax, part, baselines, headline_pool))
        _comparison_axis(ax, part, (metric, evaluator), summary, ref)
        ax.set_ylim(-0.7, len(baselines) - 0.4)
    pooled = c[c.split == headline_pool].groupby("baseline")["n"].max()  # n differs per baseline
    labels = [f"vs {b}" + (f"\n(n = {int(pooled[b])})" if b in pooled else "") for b in baselines]
    axes[0][0].set_yticks(range(len(baselines)), labels)
    axes[0][0].invert_yaxis()
    legend = f"filled = pooled {headline_pool}, paired situations per baseline on the left"
    if headline_pool != "all" and "all" in sizes:
        legend += ", hollow = all evaluated splits"
    fig.suptitle(
        f"Headline: {ref} against each baseline on the same situations (paired bootstrap, 95 % CI)\n" + legend
    )
    return fig


# ---------------------------------------------------------------- orchestration
@dataclass
class FigureStatus:
    name: str
    status: str  # "written" | "missing inputs"
    note: str
    files: list[str]


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else None


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def logged_results() -> pd.DataFrame | None:
    path = Path(
        os.environ.get(
            ENV_LOGGED, REPO_ROOT.parent / "shared" / "data" / "authors-logged-results" / "sbert_coverage.csv"
        )
    )
    if not path.exists():
        return None
    return pd.read_csv(path, keep_default_na=False)


@dataclass
class Inputs:
    """Everything the figures read from one results folder (None = the file does not exist)."""

    results: Path
    metrics: pd.DataFrame | None
    comparisons: pd.DataFrame | None
    summary: dict[str, Any]
    train_log: pd.DataFrame | None
    calibration: pd.DataFrame | None
    checkpoints: pd.DataFrame | None
    validation: pd.DataFrame | None
    sweep: pd.DataFrame | None
    estimator: dict[str, Any] | None
    ablations: dict[str, pd.DataFrame]
    logged: pd.DataFrame | None
    authors_cells: pd.DataFrame | None
    alignment: pd.DataFrame | None = None
    styles: pd.DataFrame | None = None
    style_comparisons: pd.DataFrame | None = None
    style_nli: pd.DataFrame | None = None

    @classmethod
    def load(cls, results: Path, logged: pd.DataFrame | None) -> Inputs:
        return cls(
            results=results,
            metrics=_read_csv(results / "eval" / "metrics.csv"),
            comparisons=_read_csv(results / "eval" / "comparisons.csv"),
            summary=_read_json(results / "eval" / "eval_summary.json") or {},
            train_log=_read_csv(results / "train_log.csv"),
            calibration=_read_csv(results / "estimator" / "calibration.csv"),
            checkpoints=_read_csv(results / "eval" / "checkpoint_coverage.csv"),
            validation=_read_csv(results / "validation_curve.csv"),
            sweep=_read_csv(results / "sweep" / "validation_sweep.csv"),
            estimator=_read_json(results / "estimator" / "metrics.json"),
            ablations={p.parent.name: pd.read_csv(p) for p in sorted((results / "ablations").glob("*/train_log.csv"))},
            logged=logged,
            authors_cells=figures_authors.read_cells(results),
            alignment=_read_csv(results / "alignment" / "summary.csv"),
            styles=_read_csv(results / "styles" / "summary.csv"),
            style_comparisons=_read_csv(results / "styles" / "comparisons.csv"),
            style_nli=_read_csv(results / "styles" / "nli_summary.csv"),
        )

    def need(self, name: str, what: str) -> Any:
        value = getattr(self, name)
        if value is None or (isinstance(value, dict) and not value):
            raise MissingInputs(what)
        return value


EVAL = "results/eval/metrics.csv: run notebooks 05–06"


def _missing(what: str):
    raise MissingInputs(what)


def _main_tables(inp: Inputs, out: Path) -> list[Path]:
    table = main_coverage_table(inp.need("metrics", EVAL))
    files = write_table(
        table, out / "tables" / "main_coverage", f"Coverage per split (SBERT @ {table.attrs['threshold']})"
    )
    lm = logged_main(inp.logged)
    if not lm.empty:
        keep = ["system", "split", "n", "relative_accuracy", "absolute_accuracy", "candidate_file"]
        files += write_table(
            lm[keep].reset_index(drop=True),
            out / "tables" / "reported_main_sbert",
            "Reported: the authors' logged SBERT coverage (scale-70 @ 0.70; reward model as evaluator)",
        )
        try:
            files += write_table(
                reported_vs_reproduced(table, inp.logged),
                out / "tables" / "reported_vs_reproduced",
                "Reported (authors' logs, their scale-70 estimator @ 0.70) vs reproduced (our "
                "evaluator and threshold) with the delta",
            )
        except MissingInputs:
            pass
    return files


@styled
def fig_alignment(summary: pd.DataFrame) -> plt.Figure:
    """Best-of-n gain of each score over a random pick, under the independent evaluator (95 % CI), beside the
    oracle's; and each variant's share of completions that match no reference."""
    rows = summary.iloc[::-1].reset_index(drop=True)
    fig, (ax, zero) = plt.subplots(
        1,
        2,
        figsize=(10, 0.42 * len(rows) + 1.8),
        layout="constrained",
        gridspec_kw={"width_ratios": [3, 1.3]},
        sharey=True,
    )
    y = np.arange(len(rows))
    colors = [
        OTHER_COLORS[0] if v == "oracle" else "#999999" if v == "shared" else OTHER_COLORS[2] for v in rows["variant"]
    ]
    err = np.vstack([rows["best_of_n_gain"] - rows["ci_low"], rows["ci_high"] - rows["best_of_n_gain"]])
    ax.errorbar(rows["best_of_n_gain"], y, xerr=err, fmt="none", ecolor="#333333", capsize=3)
    ax.scatter(rows["best_of_n_gain"], y, c=colors, zorder=3)
    ax.axvline(0, color="#999999", linewidth=1)
    ax.set_yticks(
        y,
        ["oracle (the evaluator's own pick)" if v == "oracle" else c for c, v in zip(rows["score"], rows["variant"])],
    )
    n, k = int(rows["situations"].iloc[0]), rows["samples_per_situation"].iloc[0]
    ax.set_xlabel("independent SBERT coverage: picked − random pick")
    ax.set_title(f"best-of-{k:g} pick by each score ({n} validation situations, 95 % CI)")
    rate = rows["zero_coverage_rate"].astype(float)
    zero.barh(y, rate.fillna(0), color="#555555")
    for yi, r in zip(y, rate):
        if r == r:  # a variant's rate (the shared components and the oracle have none)
            zero.text(r + 0.02, yi, f"{r:.0%}", va="center")
    zero.set_xlim(0, 1)
    zero.set_title("matches no reference")
    zero.set_xlabel("share of completions")
    fig.suptitle("Does the reward see what the evaluator sees? (reward–evaluator alignment on the SFT policy)")
    return fig


@styled
def fig_styles(summary: pd.DataFrame, comps: pd.DataFrame) -> plt.Figure:
    """Left: each system's mean coverage per prompt condition (95 % CI), conditions in their pre-registered order.
    Right: the reference system minus each other system per condition (paired 95 % CI)."""
    conds = list(dict.fromkeys(summary["condition"]))
    systems = list(dict.fromkeys(summary["system"]))
    fig, (ax, diff) = plt.subplots(
        1, 2, figsize=(11, 0.5 * len(conds) + 1.8), layout="constrained", sharey=True, gridspec_kw={"wspace": 0.05}
    )
    y = np.arange(len(conds))[::-1]
    for k, system in enumerate(systems):
        part = summary[summary["system"] == system].set_index("condition").reindex(conds)
        off = (k - (len(systems) - 1) / 2) * 0.22
        err = np.vstack([part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]])
        ax.errorbar(part["mean"], y + off, xerr=err, fmt="o", color=system_color(system), label=system, capsize=2)
    ax.set_yticks(y, conds)
    lo, hi = int(summary["n"].min()), int(summary["n"].max())
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    what = "SBERT coverage (English: independent evaluator" + (
        "; .zh: multilingual evaluator, calibrated)" if (summary["language"] == "zh").any() else ")"
    )
    ax.set_xlabel(f"{what}\nn = {n} situations per cell, 95 % CI")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(systems), fontsize=8, frameon=False)
    for k, base in enumerate(list(dict.fromkeys(comps["baseline"]))):
        part = comps[comps["baseline"] == base].set_index("condition").reindex(conds)
        off = (k - 0.5) * 0.25
        err = np.vstack([part["diff"] - part["ci_low"], part["ci_high"] - part["diff"]])
        ref = comps["system"].iloc[0]
        diff.errorbar(part["diff"], y + off, xerr=err, fmt="s", color=system_color(base), label=f"{ref} − {base}")
    diff.axvline(0, color="#999999", linewidth=1)
    diff.set_xlabel("paired difference on the same situations\n(95 % CI)")
    diff.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Beyond the training prompt: coverage per prompt style and system message (ours, pre-registered)")
    return fig


def _styles_outputs(inp: Inputs, out: Path) -> list[Path]:
    summary = inp.need("styles", "results/styles/summary.csv: notebook 05 with styles.styles")
    comps = inp.need("style_comparisons", "results/styles/comparisons.csv: notebook 05 with styles.styles")
    paths = save_figure(fig_styles(summary, comps), out / "prompt_styles") + write_table(
        comps, out / "tables" / "prompt_styles", "Per prompt condition: reference − baseline, paired 95 % CI, MDE"
    )
    if inp.style_nli is not None:  # where an NLI model ran (not offline)
        cols = ["condition", "system", "n", "mean", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]
        cols += ["ratio_to_control", "evaluator_validated"]
        caption = "Per prompt condition and system: NLI score and Accuracy@0.33 (95 % CI), ratio to the control"
        paths += write_table(inp.style_nli[cols], out / "tables" / "prompt_styles_nli", caption)
    return paths


FIGURES: list[tuple[str, Any]] = [
    (
        "headline comparisons",
        lambda inp, out: (
            save_figure(
                fig_comparisons(
                    inp.need("comparisons", "results/eval/comparisons.csv: run notebooks 05-06"), inp.summary
                ),
                out / "headline_comparisons",
            )
            + write_table(
                inp.comparisons,
                out / "tables" / "comparisons",
                "Paired comparisons (reference system - "
                "baseline) with paired-bootstrap 95 % CIs, per split and pooled",
            )
        ),
    ),
    ("main coverage table", _main_tables),
    (
        "coverage vs perspectives",
        lambda inp, out: save_figure(
            fig_coverage_vs_perspectives(main_coverage_table(inp.need("metrics", EVAL)), logged_main(inp.logged)),
            out / "coverage_vs_perspectives",
        ),
    ),
    (
        "training dynamics",
        lambda inp, out: save_figure(
            fig_training_dynamics(
                inp.need("train_log", "results/train_log.csv: run notebook 04_grpo"),
                inp.authors_cells,
                inp.checkpoints,
            ),
            out / "training_dynamics",
        ),
    ),
    (
        "validation curve",
        lambda inp, out: save_figure(
            fig_validation_curve(
                inp.need("validation", "results/validation_curve.csv: notebook 04 with train.validation_every")
            ),
            out / "validation_curve",
        ),
    ),
    (
        "validation sweep",
        lambda inp, out: _sweep_outputs(
            inp.need("sweep", "results/sweep/validation_sweep.csv: scripts/validation_sweep.py over the tried runs"),
            out,
        ),
    ),
    (
        "reward-evaluator alignment",
        lambda inp, out: (
            save_figure(
                fig_alignment(
                    inp.need("alignment", "results/alignment/summary.csv: notebook 03 with alignment.samples")
                ),
                out / "reward_alignment",
            )
            + write_table(
                inp.alignment,
                out / "tables" / "reward_alignment",
                "Best-of-n gain of each reward score over a random pick under the independent evaluator (95 % CI), "
                "within-situation Spearman, zero-coverage rate",
            )
        ),
    ),
    ("prompt styles", _styles_outputs),
    (
        "similarity estimator",
        lambda inp, out: save_figure(
            fig_estimator(
                inp.need("calibration", "results/estimator/calibration.csv: run notebook 02"),
                inp.need("estimator", "results/estimator/metrics.json: run notebook 02"),
            ),
            out / "similarity_estimator",
        ),
    ),
    (
        "reward ablation",
        lambda inp, out: save_figure(
            fig_reward_ablation(inp.need("ablations", "results/ablations/*/train_log.csv: ablation runs")),
            out / "reward_ablation",
        ),
    ),
    (
        "core vs summary",
        lambda inp, out: write_table(
            core_vs_summary_table(inp.need("metrics", EVAL)),
            out / "tables" / "core_vs_summary",
            "SBERT coverage of the core block vs the summary text",
        ),
    ),
    (
        "token efficiency",
        lambda inp, out: save_figure(fig_tokens(inp.need("metrics", EVAL)), out / "token_efficiency"),
    ),
    ("LLM judge", lambda inp, out: save_figure(fig_judge(inp.summary.get("judge", {})), out / "llm_judge")),
    (
        "GRPO step time per backend",
        lambda inp, out: (
            figures_gpu.build(inp.results, out)
            or _missing("results/gpu/grpo_step_*.json: benchmarks/grpo_step.py on a GPU (scripts/gpu_check.sh)")
        ),
    ),
    (
        "headline gains",
        lambda inp, out: write_table(
            headline_table(inp.need("metrics", EVAL)),
            out / "tables" / "headline",
            "Relative gains (ours - baseline) / baseline next to the paper's claims",
        ),
    ),
    (
        "authors' own outputs",
        lambda inp, out: figures_authors.build(inp.results, out) or _missing(AUTHORS),
    ),
]


def build_all(results: Path, out_dir: Path, logged: pd.DataFrame | None = None) -> list[FigureStatus]:
    """Every figure and table of the paper that ``results`` supports; the rest are listed with the step that
    produces their inputs. Only :class:`MissingInputs` is reported as missing: any other error is a bug and raises."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inp = Inputs.load(Path(results), logged)
    statuses = []
    for name, make in FIGURES:
        try:
            files = make(inp, out_dir)
            statuses.append(FigureStatus(name, "written", "", [str(f.relative_to(out_dir)) for f in files]))
        except MissingInputs as exc:
            statuses.append(FigureStatus(name, "missing inputs", str(exc), []))
    results = Path(results).resolve()
    shown = results.relative_to(REPO_ROOT) if results.is_relative_to(REPO_ROOT) else results.name
    index = ["# Figures and tables", "", f"Generated from `{shown}`.", ""]
    index += ["| figure / table | status | files / what produces the inputs |", "|---|---|---|"]
    index += [f"| {s.name} | {s.status} | {', '.join(s.files) if s.files else s.note} |" for s in statuses]
    (out_dir / "INDEX.md").write_text("\n".join(index) + "\n")
    return statuses


def results_source(cfg, paths) -> tuple[Path, str]:
    """(results folder, sentence saying which): the run's own ``<run>/results`` when the run has evaluated
    (``eval/metrics.csv``), else the committed ``results/<profile>``, else (a profile nothing was published for yet,
    e.g. ``paper`` on a fresh GPU runtime) the committed ``results/cpu`` — so a fresh clone, Binder or Colab always
    shows numbers, labelled with where they come from."""
    own = Path(paths.results)
    evaluated = lambda p: (p / "eval" / "metrics.csv").exists()  # noqa: E731
    if evaluated(own):
        return own, f"the run's results ({own})"
    why = (
        f"this run has no evaluation yet: {own / 'eval' / 'metrics.csv'} is missing; run notebooks 01-06 to see yours"
    )
    for profile in dict.fromkeys([cfg.profile, "cpu"]):
        committed = REPO_ROOT / "results" / profile
        if evaluated(committed):
            other = "" if profile == cfg.profile else f", profile {profile}: none are committed for {cfg.profile}"
            return committed, f"the committed results/{profile} ({why}{other})"
    committed = REPO_ROOT / "results" / cfg.profile
    if committed.is_dir():
        return committed, f"the committed results/{cfg.profile} ({why})"
    return own, f"the run's results ({own}; nothing evaluated yet, nothing committed for {cfg.profile})"


def gallery(out_dir: str | Path) -> list[tuple[str, Path]]:
    """(caption, file) for every written figure (PNG) and table (Markdown) of ``out_dir``, headline first, in the
    order of :data:`FIGURES`: what notebook 07 shows."""
    out_dir = Path(out_dir)
    shown: list[tuple[str, Path]] = []
    for png in sorted(out_dir.glob("*.png"), key=lambda p: (p.stem != "headline_comparisons", p.stem)):
        shown.append((png.stem.replace("_", " "), png))
    for md in sorted((out_dir / "tables").glob("*.md"), key=lambda p: (p.stem != "comparisons", p.stem)):
        first = md.read_text().splitlines()[0]
        caption = first.removeprefix("<!-- ").removesuffix(" -->") if first.startswith("<!--") else md.stem
        shown.append((f"table {md.stem}: {caption}", md))
    return shown
