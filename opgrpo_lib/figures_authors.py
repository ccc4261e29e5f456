"""Figures and tables of the authors' own evaluation logs (step 08), from ``results/<profile>/authors/*.csv`` only
(pure functions of those files, no torch): the coverage table per evaluator setting, the RL-step ablation, the
reward-variant ablation, core vs summary, the estimator/threshold ablation, output length, the paired headline
claims under the authors' evaluator and under independent ones, and the rank agreement."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

SPLIT_ORDER = ["5p", "6p", "7p", "8p", "9p", "10p", "gt10p", "5p+10p", "all common"]
VARIANTS = ["ex", "im", "im-rewarddown", "im-rewarddown-unique"]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, keep_default_na=False) if path.exists() else None


def _cell(r: pd.Series, col: str = "relative") -> str:
    return f"{r[f'{col}_accuracy']:.4f} [{r[f'{col}_ci_low']:.3f}, {r[f'{col}_ci_high']:.3f}]"


def _name(r: pd.Series) -> str:
    return f"{r['system']} (run {r['version']})" if r.get("version") else str(r["system"])


def setting(evaluator: str, threshold: float) -> str:
    return f"{evaluator} @ {float(threshold):.2f}"


def coverage_tables(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Systems × splits, one table per evaluator setting: relative accuracy [95 % CI] / hit_all / n."""
    out = {}
    c = cells.assign(row=cells.apply(_name, axis=1), value=cells.apply(
        lambda r: f"{_cell(r)} / {int(r['hit_all'])}/{int(r['n'])}", axis=1))  # fmt: skip
    for (ev, thr), g in c.groupby(["evaluator", "threshold"], sort=True):
        t = g.pivot_table(index="row", columns="split", values="value", aggfunc="first")
        t = t[[s for s in SPLIT_ORDER if s in t.columns]].fillna("–")
        out[setting(ev, thr)] = t.reset_index().rename(columns={"row": "system"})
    return out


def fig_steps(cells: pd.DataFrame) -> plt.Figure:
    """Relative accuracy vs RL step for Qwen2.5-1.5B and Llama-3.2-3B on 5p and 10p (base SBERT @ 0.75), 95 % CIs."""
    steps = cells[(cells["rl_step"].astype(str) != "") & (cells["evaluator"] == "paraphrase-mpnet-base-v2")
                  & (cells["threshold"].astype(float).round(2) == 0.75)].copy()  # fmt: skip
    if steps.empty:
        raise LookupError("no step-ablation cells")
    steps["step"] = steps["rl_step"].astype(float).astype(int)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, split in zip(axes, ["5p", "10p"]):
        for model, marker in (("Qwen2.5-1.5B", "o"), ("Llama-3.2-3B", "s")):
            g = steps[(steps.split == split) & steps.system.str.contains(model, regex=False)].sort_values("step")
            if g.empty:
                continue
            y = g["relative_accuracy"].astype(float)
            err = [y - g["relative_ci_low"].astype(float), g["relative_ci_high"].astype(float) - y]
            ax.errorbar(g["step"], y, yerr=err, marker=marker, capsize=3, label=model)
        ax.set_title(f"{split} (paraphrase-mpnet-base-v2 @ 0.75)")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative accuracy (95 % CI)")
    axes[0].legend()
    fig.suptitle("Authors' RL-step ablation, regenerated from their per-row logs")
    fig.tight_layout()
    return fig


def reward_variants(cells: pd.DataFrame) -> pd.DataFrame:
    v = cells[cells.system.isin([f"OP-GRPO Qwen2.5-3B {x}" for x in VARIANTS])]
    v = v.assign(setting=[setting(e, t) for e, t in zip(v.evaluator, v.threshold)], value=v.apply(_cell, axis=1))
    t = v.pivot_table(index=["setting", "system"], columns="split", values="value", aggfunc="first")
    return t[[s for s in SPLIT_ORDER if s in t.columns]].fillna("–").reset_index()


def core_vs_summary(cells: pd.DataFrame) -> pd.DataFrame:
    s = cells[cells.system.str.contains("summary-format", regex=False)]
    return s.assign(value=s.apply(_cell, axis=1))[["system", "version", "split", "evaluator", "threshold", "n",
                                                   "value", "absolute_accuracy"]].reset_index(drop=True)  # fmt: skip


def estimator_ablation(cells: pd.DataFrame) -> pd.DataFrame:
    """The same candidates under different evaluators / thresholds (systems × splits logged in > 1 setting)."""
    c = cells.assign(setting=[setting(e, t) for e, t in zip(cells.evaluator, cells.threshold)],
                     row=cells.apply(_name, axis=1), value=cells.apply(_cell, axis=1))  # fmt: skip
    multi = c.groupby(["row", "split"])["setting"].transform("nunique") > 1
    t = c[multi].pivot_table(index=["row", "split"], columns="setting", values="value", aggfunc="first")
    return t.fillna("–").reset_index().rename(columns={"row": "system"})


def output_length(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean words (and tokens) of the candidate sentences per system and split: an approximation of the raw output
    length (the authors' splitter drops final punctuation and numbering; text outside the scored block is absent)."""
    cols = ["candidate_words_mean", "candidate_sentences_mean"] + (
        ["candidate_tokens_mean"] if "candidate_tokens_mean" in cells else [])  # fmt: skip
    c = cells.assign(row=cells.apply(_name, axis=1))
    c = c.drop_duplicates(["row", "split"])  # the same candidates under every evaluator: one length
    return c[["row", "split", *cols]].rename(columns={"row": "system"}).sort_values(["system", "split"])


def fig_length(length: pd.DataFrame) -> plt.Figure:
    g = length[length.split.isin(["5p", "10p"])].pivot_table(index="system", columns="split",
                                                              values="candidate_words_mean")  # fmt: skip
    g = g.sort_values(g.columns[0])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(g) + 1.5))
    g.plot.barh(ax=ax)
    ax.set_xlabel("words in the scored candidate sentences (approximation of output length)")
    ax.set_title("Output length per system (authors' logged candidates)")
    fig.tight_layout()
    return fig


def fig_claims(claims: pd.DataFrame, title: str) -> plt.Figure:
    """Paired differences (a − b, relative accuracy) with 95 % CIs, pooled 5p + 10p where logged, else per split."""
    c = claims.copy()
    c["setting"] = [setting(e, t) if str(t) not in ("", "nan", "None") else str(e)
                    for e, t in zip(c.evaluator, c.threshold)]  # fmt: skip
    pooled = c[c.split == "5p+10p"]
    rest = c[~c.set_index(["setting", "a", "b"]).index.isin(pooled.set_index(["setting", "a", "b"]).index)]
    rest = rest[rest.split != "all common"].drop_duplicates(["setting", "a", "b"])
    c = pd.concat([pooled, rest]).reset_index(drop=True)
    c["label"] = [f"{a} − {b} [{s}; {sp}]" for a, b, s, sp in zip(c.a, c.b, c.setting, c.split)]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(c) + 1.4))
    y = range(len(c))
    ax.errorbar(c["diff"], list(y), xerr=[c["diff"] - c["ci_low"], c["ci_high"] - c["diff"]], fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(list(y), c["label"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference in relative accuracy (95 % bootstrap CI over situations)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def build(results: Path, out: Path) -> list[Path]:
    """Every authors'-evidence figure and table that ``results/authors`` supports ([] when it does not exist)."""
    from .figures import save_figure, write_table

    src = Path(results) / "authors"
    cells = _read(src / "cells.csv")
    if cells is None or cells.empty:
        return []
    out = Path(out)
    tab = out / "tables"
    files: list[Path] = []
    for name, t in coverage_tables(cells).items():
        stem = "authors_coverage_" + name.replace(" @ ", "_at_").replace(".", "")
        files += write_table(t, tab / stem, f"Authors' logged SBERT coverage, regenerated per row: {name} "
                             "(relative accuracy [95 % CI] / hit_all/n)")  # fmt: skip
    try:
        files += save_figure(fig_steps(cells), out / "authors_rl_steps")
    except LookupError:
        pass
    rv = reward_variants(cells)
    if not rv.empty:
        files += write_table(rv, tab / "authors_reward_variants", "OP-GRPO Qwen2.5-3B reward variants (authors' logs)")
    cs = core_vs_summary(cells)
    if not cs.empty:
        files += write_table(cs, tab / "authors_core_vs_summary", "Core block vs summary text (authors' logs)")
    ea = estimator_ablation(cells)
    if not ea.empty:
        files += write_table(ea, tab / "authors_estimator_ablation",
                             "Same candidates, different evaluator / threshold (authors' logs)")  # fmt: skip
    length = output_length(cells)
    files += write_table(
        length,
        tab / "authors_output_length",
        "Words / tokens of the scored candidate sentences (approximation of output length)",
        "%.1f",
    )
    files += save_figure(fig_length(length), out / "authors_output_length")
    claims = _read(src / "claims.csv")
    if claims is not None and not claims.empty:
        files += write_table(claims, tab / "authors_claims", "Paired claims from the authors' per-row counts")
        files += save_figure(fig_claims(claims, "Headline claims under the authors' evaluators"),
                             out / "authors_claims")  # fmt: skip
    for name, caption in (("rescore_scores", "Re-scored under evaluators the authors did not use"),
                          ("rank_agreement", "Rank agreement with the authors' main-setting scores"),
                          ("rescore_claims", "Paired claims re-scored under independent evaluators")):  # fmt: skip
        df = _read(src / f"{name}.csv")
        if df is not None and not df.empty:
            files += write_table(df, tab / f"authors_{name}", caption)
    rc = _read(src / "rescore_claims.csv")
    if rc is not None and not rc.empty:
        files += save_figure(fig_claims(rc, "Headline claims re-scored under independent evaluators"),
                             out / "authors_rescore_claims")  # fmt: skip
    return files
