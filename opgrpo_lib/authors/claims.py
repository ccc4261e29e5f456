"""Every logged cell (system × version × split × evaluator × threshold) with a bootstrap CI over situations, and
the paired headline claims (a − b on the situations both systems were scored on)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..stats import bootstrap_ci, paired_bootstrap

MAIN_SETTING = ("op-sbert-scale70", 0.70)  # the authors' main evaluator: their fine-tuned estimator (= reward model)
THREE_B_VARIANTS = ("ex", "im", "im-rewarddown", "im-rewarddown-unique")
BASELINES = ("Qwen3-8B explicit", "Qwen3-8B implicit", "ModPlural raw", "ModPlural refine",
             "Qwen2.5-1.5B-Instruct explicit", "Qwen2.5-1.5B-Instruct implicit")  # fmt: skip
STEP_MODELS = ("Qwen2.5-1.5B", "Llama-3.2-3B")
# The RL step's own gain: (model, later step, earlier step), wherever both logs exist (Llama's step-30 log too).
STEP_PAIRS = (("Qwen2.5-1.5B", 150, 0), ("Llama-3.2-3B", 150, 0), ("Llama-3.2-3B", 150, 30))


def _ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    return bootstrap_ci(values.tolist(), reps=reps, seed=seed)


def unique_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One log per (system, content, evaluator, threshold): re-runs of identical candidates under the same
    evaluator are the same evidence (the earliest log is kept)."""
    first = rows.sort_values("log").drop_duplicates(["system", "content_id", "evaluator", "threshold"])
    return rows[rows["log"].isin(set(first["log"]))]


def cells(rows: pd.DataFrame, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every logged cell (system × version × split × evaluator × threshold) from the per-row counts, with 95 %
    bootstrap CIs over situations."""
    out = []
    keys = ["system", "family", "rl_step", "version", "split", "evaluator", "threshold"]
    for key, g in unique_rows(rows).groupby(keys, dropna=False, sort=False):
        ratio, hit = g["ratio"].to_numpy(float), g["hit_all"].to_numpy(float)
        lo, hi = _ci(ratio, reps, seed)
        alo, ahi = _ci(hit, reps, seed)
        logs_of = rows[
            (rows.content_id.isin(set(g.content_id)))
            & (rows.system == key[0])
            & (rows.evaluator == key[5])
            & (rows.threshold == key[6])
        ]["log"].unique()
        out.append(
            {
                **dict(zip(keys, key)),
                "n": len(g),
                "hit_all": int(hit.sum()),
                "relative_accuracy": float(ratio.mean()),
                "relative_ci_low": lo,
                "relative_ci_high": hi,
                "absolute_accuracy": float(hit.mean()),
                "absolute_ci_low": alo,
                "absolute_ci_high": ahi,
                "candidate_words_mean": float(g["candidate_words"].mean()),
                "candidate_sentences_mean": float(g["n_candidate_sentences"].mean()),
                "logs": ";".join(sorted(logs_of)),
            }
        )
    return pd.DataFrame(out)


def best_three_b(cell_df: pd.DataFrame) -> str:
    """The authors' best OP-GRPO Qwen2.5-3B variant: highest relative accuracy pooled over 5p + 10p under their
    main evaluator (scale-70 @ 0.70)."""
    main = cell_df[
        (cell_df.evaluator == MAIN_SETTING[0])
        & np.isclose(cell_df.threshold, MAIN_SETTING[1])
        & cell_df.split.isin(["5p", "10p"])
    ]
    cand = main[main.system.isin([f"OP-GRPO Qwen2.5-3B {v}" for v in THREE_B_VARIANTS])]
    if cand.empty:
        return f"OP-GRPO Qwen2.5-3B {THREE_B_VARIANTS[2]}"
    pooled = cand.groupby("system").apply(
        lambda g: (g.relative_accuracy * g.n).sum() / g.n.sum(), include_groups=False
    )
    return str(pooled.idxmax())


def headline_pairs(best: str) -> list[tuple[str, str]]:
    pairs = [(best, b) for b in BASELINES]
    pairs += [(f"OP-GRPO {m} step {a}", f"OP-GRPO {m} step {b}") for m, a, b in STEP_PAIRS]
    return pairs


def paired_claims(
    rows: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    reps: int = 2000,
    seed: int = 0,
    score: str = "ratio",
    setting_cols: Sequence[str] = ("evaluator", "threshold"),
) -> pd.DataFrame:
    """Paired differences a − b on the situations both systems were scored on, per split, pooled over 5p + 10p and
    pooled over every common split, for each evaluator setting; paired bootstrap CIs over situations."""
    rows = unique_rows(rows) if "content_id" in rows else rows
    # one content version per (system, split, setting): the earliest
    rows = (rows.sort_values("log") if "log" in rows else rows).drop_duplicates(
        ["system", "split", *setting_cols, "opv2_row"]
    )
    out = []
    for setting, g in rows.groupby(list(setting_cols), sort=False):
        setting = setting if isinstance(setting, tuple) else (setting,)
        for a, b in pairs:
            ga, gb = g[g.system == a], g[g.system == b]
            if ga.empty or gb.empty:
                continue
            j = ga.merge(gb, on=["split", "opv2_row"], suffixes=("_a", "_b"))
            if j.empty:
                continue
            splits = [s for s in ("5p", "6p", "7p", "8p", "9p", "10p", "gt10p") if s in set(j.split)]
            groups = [(s, [s]) for s in splits]
            if {"5p", "10p"} <= set(splits):
                groups.append(("5p+10p", ["5p", "10p"]))
            if len(splits) > 1:
                groups.append(("all common", splits))
            for label, ss in groups:
                jj = j[j.split.isin(ss)]
                xa, xb = jj[f"{score}_a"].to_numpy(float), jj[f"{score}_b"].to_numpy(float)
                res = paired_bootstrap(xa, xb, reps=reps, seed=seed)
                out.append(
                    {
                        **dict(zip(setting_cols, setting)),
                        "a": a,
                        "b": b,
                        "split": label,
                        "n": len(jj),
                        "score_a": float(xa.mean()),
                        "score_b": float(xb.mean()),
                        **res,
                        "relative_gain": float(xa.mean() / xb.mean() - 1) if xb.mean() else float("nan"),
                    }
                )
    return pd.DataFrame(out)
