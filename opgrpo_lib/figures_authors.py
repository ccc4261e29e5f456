"""Figures and tables of the authors' own evaluation logs (step 08), from ``results/<profile>/authors/*.csv`` only
(pure functions of those files, no torch): the coverage table per evaluator setting, the RL-step ablation, the
reward-variant ablation, core vs summary, the estimator/threshold ablation, output length, the paired headline
claims under the authors' evaluator and under independent ones, and the rank agreement."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import LOGGED_AS, save_figure, styled, system_color, write_table  # noqa: E402

SPLIT_ORDER = ["5p", "6p", "7p", "8p", "9p", "10p", "gt10p", "5p+10p", "all common"]
VARIANTS = ["ex", "im", "im-rewarddown", "im-rewarddown-unique"]

NO_COUNTERPART = "#999999"  # an authors' system with no system of ours behind it
CELLS = "authors/cells.csv"  # under results/<profile>: step 08's per-cell numbers, re-derived from the per-row logs
# The RL-step ablation: the evaluator setting its steps were logged in, and its runs (model, marker, colour); not runs
# of ours (no system colour): two colours of the rest of the palette
STEP_SETTING = ("paraphrase-mpnet-base-v2", 0.75)
STEP_RUNS = (("Qwen2.5-1.5B", "o", "#56B4E9"), ("Llama-3.2-3B", "s", "#000000"))


def _color(system: str) -> str:
    """The fixed colour of our system whose logged counterpart this authors' system is, else grey."""
    return system_color(LOGGED_AS[system]) if system in LOGGED_AS else NO_COUNTERPART


def _colour_legend(fig: plt.Figure, systems: list[str], kind: str) -> None:
    """A legend under the figure saying which colour is which system of ours (never over the data)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = [s for s in dict.fromkeys(systems) if s in LOGGED_AS]
    entries = [(_color(s), f"{s} = our {LOGGED_AS[s]}") for s in shown]
    if any(s not in LOGGED_AS for s in systems):
        entries.append((NO_COUNTERPART, "no counterpart among our systems"))

    def handle(color: str) -> Any:
        return Patch(color=color) if kind == "patch" else Line2D([], [], color=color, marker="o", linewidth=2)

    fig.legend(
        [handle(col) for col, _ in entries],
        [t for _, t in entries],
        loc="outside lower center",
        ncol=min(len(entries), 3),
        title="colour: the same system in our own figures",
    )


def _split_title(split: str) -> str:
    m = re.fullmatch(r"(\d+)p", split)
    return f"{split}: {m.group(1)} reference perspectives per situation" if m else split


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
    c = cells.assign(
        row=cells.apply(_name, axis=1),
        value=cells.apply(lambda r: f"{_cell(r)} / {int(r['hit_all'])}/{int(r['n'])}", axis=1),
    )
    for (ev, thr), g in c.groupby(["evaluator", "threshold"], sort=True):
        t = g.pivot_table(index="row", columns="split", values="value", aggfunc="first")
        t = t[[s for s in SPLIT_ORDER if s in t.columns]].fillna("–")
        out[setting(ev, thr)] = t.reset_index().rename(columns={"row": "system"})
    return out


def read_cells(results: Path) -> pd.DataFrame | None:
    """``results/<profile>/authors/cells.csv`` (None when step 08 has not written it)."""
    return _read(Path(results) / CELLS)


def step_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The RL-step ablation's cells (:data:`STEP_SETTING`) with an integer ``step``; empty when none are logged."""
    evaluator, threshold = STEP_SETTING
    steps = cells[
        (cells["rl_step"].astype(str) != "")
        & (cells["evaluator"] == evaluator)
        & (cells["threshold"].astype(float).round(2) == threshold)
    ].copy()
    steps["step"] = steps["rl_step"].astype(float).astype(int)
    return steps


def step_run(steps: pd.DataFrame, model: str, split: str) -> pd.DataFrame:
    """One run's cells of :func:`step_cells` on one split, by step."""
    return steps[(steps.split == split) & steps.system.str.contains(model, regex=False)].sort_values("step")


@styled
def fig_steps(cells: pd.DataFrame) -> plt.Figure:
    """Relative accuracy vs RL step for Qwen2.5-1.5B and Llama-3.2-3B on 5p and 10p (base SBERT @ 0.75), 95 % CIs."""
    steps = step_cells(cells)
    if steps.empty:
        raise LookupError("no step-ablation cells")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True, layout="constrained")
    for ax, split in zip(axes, ["5p", "10p"]):
        for model, marker, color in STEP_RUNS:
            g = step_run(steps, model, split)
            if g.empty:
                continue
            y = g["relative_accuracy"].astype(float)
            err = [y - g["relative_ci_low"].astype(float), g["relative_ci_high"].astype(float) - y]
            ax.errorbar(g["step"], y, yerr=err, marker=marker, capsize=3, color=color, label=f"OP-GRPO {model}")
        ax.set_title(_split_title(split))
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative accuracy (95 % CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2)
    fig.suptitle(
        "Authors' RL-step ablation: relative accuracy vs RL step, regenerated from their per-row logs\n"
        "evaluator paraphrase-mpnet-base-v2 (off-the-shelf SBERT) @ 0.75, 95 % bootstrap CI over situations"
    )
    return fig


def reward_variants(cells: pd.DataFrame) -> pd.DataFrame:
    v = cells[cells.system.isin([f"OP-GRPO Qwen2.5-3B {x}" for x in VARIANTS])]
    v = v.assign(setting=[setting(e, t) for e, t in zip(v.evaluator, v.threshold)], value=v.apply(_cell, axis=1))
    t = v.pivot_table(index=["setting", "system"], columns="split", values="value", aggfunc="first")
    return t[[s for s in SPLIT_ORDER if s in t.columns]].fillna("–").reset_index()


def core_vs_summary(cells: pd.DataFrame) -> pd.DataFrame:
    s = cells[cells.system.str.contains("summary-format", regex=False)]
    return s.assign(value=s.apply(_cell, axis=1))[
        ["system", "version", "split", "evaluator", "threshold", "n", "value", "absolute_accuracy"]
    ].reset_index(drop=True)


def estimator_ablation(cells: pd.DataFrame) -> pd.DataFrame:
    """The same candidates under different evaluators / thresholds (systems × splits logged in > 1 setting)."""
    c = cells.assign(
        setting=[setting(e, t) for e, t in zip(cells.evaluator, cells.threshold)],
        row=cells.apply(_name, axis=1),
        value=cells.apply(_cell, axis=1),
    )
    multi = c.groupby(["row", "split"])["setting"].transform("nunique") > 1
    t = c[multi].pivot_table(index=["row", "split"], columns="setting", values="value", aggfunc="first")
    return t.fillna("–").reset_index().rename(columns={"row": "system"})


def output_length(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean words (and tokens) of the candidate sentences per system and split: an approximation of the raw output
    length (the authors' splitter drops final punctuation and numbering; text outside the scored block is absent)."""
    cols = ["candidate_words_mean", "candidate_sentences_mean"] + (
        ["candidate_tokens_mean"] if "candidate_tokens_mean" in cells else []
    )
    c = cells.assign(row=cells.apply(_name, axis=1))
    c = c.drop_duplicates(["row", "split"])  # the same candidates under every evaluator: one length
    return c[["row", "split", *cols]].rename(columns={"row": "system"}).sort_values(["system", "split"])


@styled
def fig_length(length: pd.DataFrame) -> plt.Figure:
    """Mean words of the scored candidate sentences per system, one panel per split (5p, 10p), longest on top; a
    system of ours' logged counterpart in that system's colour."""
    g = length[length.split.isin(["5p", "10p"])].pivot_table(
        index="system", columns="split", values="candidate_words_mean"
    )
    splits = [s for s in ("5p", "10p") if s in g.columns]
    g = g.assign(_mean=g[splits].mean(axis=1)).sort_values(["_mean"], ascending=False, kind="stable")
    systems, y = list(g.index), list(range(len(g)))
    colors = [_color(s) for s in systems]
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(10.5, 0.27 * len(g) + 2.2),
        sharey=True,
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    top = float(g[splits].max().max())
    for ax, split in zip(axes[0], splits):
        v = g[split]
        ax.barh(y, v.fillna(0).to_numpy(dtype=float), color=colors, height=0.7)
        for yi, val in zip(y, v):
            missing = pd.isna(val)
            ax.annotate(
                "not logged" if missing else f"{val:.0f}",
                (0 if missing else val, yi),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color="#666666" if missing else "#222222",
                style="italic" if missing else "normal",
            )
        ax.set_xlim(0, top * 1.2)
        ax.set_title(_split_title(split))
        ax.set_xlabel("mean words per output")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, systems)
    axes[0][0].set_ylim(len(g) - 0.5, -0.5)
    _colour_legend(fig, systems, "patch")
    fig.suptitle(
        "Output length of the authors' logged systems: mean words in the scored candidate sentences\n"
        "(approximates output length: their splitter drops numbering and final punctuation, and text "
        "outside the scored block is not logged)"
    )
    return fig


def _pick_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, a, b): the pooled 5p+10p where logged, else every common split pooled, else a split."""
    c = claims.copy()
    c["setting"] = [
        setting(e, t) if str(t) not in ("", "nan", "None") else str(e) for e, t in zip(c.evaluator, c.threshold)
    ]
    key = ["setting", "a", "b"]
    rank = c["split"].map({"5p+10p": 0, "all common": 1}).fillna(2)
    picked = c.assign(_rank=rank).sort_values("_rank", kind="stable").drop_duplicates(key)
    parts = {k: [s for s in g["split"] if s not in ("5p+10p", "all common")] for k, g in c.groupby(key, sort=False)}
    picked["pool"] = [
        sp if sp != "all common" else "pooled " + ", ".join(parts[(st, a, b)]) if parts[(st, a, b)] else "all common"
        for st, a, b, sp in zip(picked.setting, picked.a, picked.b, picked.split)
    ]
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(c.setting, c.a, c.b)))}
    picked["_order"] = [order[k] for k in zip(picked.setting, picked.a, picked.b)]
    return picked.sort_values("_order").drop(columns=["_rank", "_order"]).reset_index(drop=True)


def _comparison(a: str, b: str, ref: str) -> str:
    """'vs b' against the reference system; else 'shared words: a's rest − b's rest' (e.g. step 150 − step 0)."""
    if a == ref:
        return f"vs {b}"
    wa, wb = a.split(), b.split()
    n = 0
    while n < min(len(wa), len(wb)) - 1 and wa[n] == wb[n]:
        n += 1
    if n and len(wa) - n == 1 and len(wb) - n == 1:
        n -= 1  # keep a word with the differing one: "step 150 − step 0", not "150 − 0"
    return f"{' '.join(wa[:n])}: {' '.join(wa[n:])} − {' '.join(wb[n:])}" if n else f"{a} − {b}"


def _evaluator_note(setting_name: str) -> str:
    ev = setting_name.split(" @ ")[0]
    return (
        "the authors' fine-tuned estimator = their reward model"
        if ev.startswith("op-sbert")
        else "off-the-shelf SBERT"
    )


def _labelled_claims(claims: pd.DataFrame) -> tuple[pd.DataFrame, str, dict[str, str]]:
    """(picked claims with their y labels, the reference system, each setting's most common pool); a row whose
    pool is not its setting's main one says which pool and n in its label."""
    c = _pick_claims(claims)
    ref = str(c["a"].mode().iloc[0])
    c["label"] = [_comparison(str(a), str(b), ref) for a, b in zip(c.a, c.b)]
    main = {s: g["pool"].mode().iloc[0] for s, g in c.groupby("setting")}
    c["label"] += [f"\n({p}; n = {int(n)})" if p != main[s] else "" for s, p, n in zip(c.setting, c.pool, c.n)]
    return c, ref, main


def _claims_axes(settings: list[str], labels: dict[str, list[str]]) -> tuple[plt.Figure, list[Any], bool]:
    """(figure, one axis per setting, side by side?): side by side when every setting has the same comparisons,
    else stacked on a shared axis with heights by their number of rows."""
    side = len(settings) > 1 and all(labels[s] == labels[settings[0]] for s in settings)
    rows = [len(labels[s]) for s in settings]
    if side:
        fig, axes = plt.subplots(
            1,
            len(settings),
            figsize=(4 + 4.2 * len(settings), 1.9 + 0.5 * rows[0]),
            sharey=True,
            sharex=True,
            squeeze=False,
            layout="constrained",
        )
        return fig, list(axes[0]), side
    fig, axes = plt.subplots(
        len(settings),
        1,
        figsize=(10.5, 1.7 + 0.55 * sum(rows) + 0.6 * len(settings)),
        sharex=True,
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": [r + 0.8 for r in rows]},
    )
    return fig, list(axes[:, 0]), side


def _claims_xlim(fig: plt.Figure, n_axes: int, side: bool, c: pd.DataFrame) -> tuple[float, float]:
    """An x-range with room for the value labels (about 1.9 in at 9 pt): right of a positive difference's
    interval, left of a negative one's."""
    # a label of width f (a fraction of the axis) needs the range (hi - lo) / (1 - f)
    width = (fig.get_figwidth() - 3.4) / (n_axes if side else 1)
    f = min(1.9 / max(width, 2.5), 0.6)
    lo, hi = min(c["ci_low"].min(), 0.0), max(c["ci_high"].max(), 0.0)
    span = (hi - lo or 0.1) / (1 - f)
    pad_lo = f * span if (c["diff"] < 0).any() else 0.03 * span
    pad_hi = f * span if (c["diff"] >= 0).any() else 0.03 * span
    return lo - pad_lo, hi + pad_hi


def _claims_points(ax: Any, part: pd.DataFrame) -> None:
    """Each claim's difference with its CI in the colour of b, and its value away from zero."""
    for y, r in part.iterrows():
        color = _color(str(r["b"]))
        ax.errorbar(
            r["diff"],
            y,
            xerr=[[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]],
            fmt="o",
            color=color,
            markersize=7,
            capsize=4,
            linewidth=2,
        )
        outward = r["diff"] >= 0  # the label goes away from zero: it never crosses the zero line
        text = f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        ax.annotate(
            text,
            (r["ci_high"] if outward else r["ci_low"], y),
            xytext=(6 if outward else -6, 0),
            textcoords="offset points",
            ha="left" if outward else "right",
            va="center",
            fontsize=9,
        )


@styled
def fig_claims(claims: pd.DataFrame, title: str) -> plt.Figure:
    """Paired differences (a − b, relative accuracy) with 95 % CIs and their values, one panel per evaluator
    setting; the pooled 5p+10p where logged, else all common splits pooled. Side by side when every setting has
    the same comparisons, else stacked on a shared axis."""
    c, ref, main = _labelled_claims(claims)
    settings = list(dict.fromkeys(c.setting))
    fig, axes, side = _claims_axes(settings, {s: list(c[c.setting == s]["label"]) for s in settings})
    xlim = _claims_xlim(fig, len(axes), side, c)
    for i, (ax, st) in enumerate(zip(axes, settings)):
        part = c[c.setting == st].reset_index(drop=True)
        _claims_points(ax, part)
        ax.axvline(0, color="black", linewidth=1)
        ax.grid(axis="x", alpha=0.3)
        ns = sorted(set(part.loc[part["pool"] == main[st], "n"].astype(int)))
        ax.set_title(f"evaluator {st} ({_evaluator_note(st)})\n{main[st]}, n = {'/'.join(map(str, ns))} situations")
        if not side or i == 0:
            ax.set_yticks(range(len(part)), list(part["label"]))
        ax.set_ylim(len(part) - 0.5, -0.5)
        if side or i == len(settings) - 1:
            ax.set_xlabel("paired difference in relative accuracy (a − b)\n← b better  |  a better →")
    axes[0].set_xlim(*xlim)
    _colour_legend(fig, list(c["b"]), "marker")
    fig.suptitle(
        f"{title}: paired differences a − b on the same situations (paired bootstrap, 95 % CI)\n'vs b' means a = {ref}"
    )
    return fig


def build(results: Path, out: Path) -> list[Path]:
    """Every authors'-evidence figure and table that ``results/authors`` supports ([] when it does not exist)."""
    src = Path(results) / "authors"
    cells = read_cells(results)
    if cells is None or cells.empty:
        return []
    out = Path(out)
    tab = out / "tables"
    files: list[Path] = []
    for name, t in coverage_tables(cells).items():
        stem = "authors_coverage_" + name.replace(" @ ", "_at_").replace(".", "")
        files += write_table(
            t,
            tab / stem,
            f"Authors' logged SBERT coverage, regenerated per row: {name} (relative accuracy [95 % CI] / hit_all/n)",
        )
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
        files += write_table(
            ea, tab / "authors_estimator_ablation", "Same candidates, different evaluator / threshold (authors' logs)"
        )
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
        files += save_figure(
            fig_claims(claims, "Headline claims under the authors' evaluators"), out / "authors_claims"
        )
    for name, caption in (
        ("rescore_scores", "Re-scored under evaluators the authors did not use"),
        ("rank_agreement", "Rank agreement with the authors' main-setting scores"),
        ("rescore_claims", "Paired claims re-scored under independent evaluators"),
    ):
        df = _read(src / f"{name}.csv")
        if df is not None and not df.empty:
            files += write_table(df, tab / f"authors_{name}", caption)
    rc = _read(src / "rescore_claims.csv")
    if rc is not None and not rc.empty:
        files += save_figure(
            fig_claims(rc, "Headline claims re-scored under independent evaluators"), out / "authors_rescore_claims"
        )
    return files
