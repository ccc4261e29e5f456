"""The logged candidate sentences re-scored under evaluators the authors did not use, with the authors' protocol
(greedy one-to-one matching at a threshold on their own reference splitting; each distinct sentence encoded once),
or with the NLI protocol; per-system scores and the rank agreement with the authors' logged scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..nli import NLI_THRESHOLD, situation_score
from ..reward import greedy_matches
from ..stats import bootstrap_ci
from .claims import BASELINES, STEP_PAIRS
from .evidence import Evidence

Item = tuple[str, str, int, list[str], list[str]]  # (system, split, opv2_row, references, candidate sentences)


@dataclass
class RescoreJob:
    system: str
    split: str
    log: str  # representative log (its content is what is re-scored)


def rescore_jobs(ev: Evidence, systems: Sequence[str], splits: Sequence[str]) -> list[RescoreJob]:
    """One representative verified log per (system, split): the earliest log of the system's first content version."""
    ok = ev.logs[ev.logs.verified].sort_values("time")
    ok = ok[ok.split.isin(list(splits))]
    if "all" not in systems:
        ok = ok[ok.system.isin(list(systems))]
    ok = ok.sort_values(["version", "time"]).drop_duplicates(["system", "split"])
    return [RescoreJob(r.system, r.split, r.log) for r in ok.sort_values(["system", "split"]).itertuples()]


def _step_systems() -> list[str]:
    return list(dict.fromkeys(f"OP-GRPO {m} step {s}" for m, *steps in STEP_PAIRS for s in steps))


def resolve_systems(names: Sequence[str], best: str) -> list[str]:
    out = []
    for n in names:
        if n == "headline":
            out += [best, *BASELINES, *_step_systems()]
        elif n == "rl_step":  # the RL-step pairs and the best 3B vs Qwen3-8B explicit
            out += [best, "Qwen3-8B explicit", *_step_systems()]
        else:
            out.append(n)
    return list(dict.fromkeys(out))


def rescore_sbert(items: Sequence[Item], encoder: Any, threshold: float, evaluator: str) -> pd.DataFrame:
    """Greedy one-to-one matching at ``threshold`` for (system, split, opv2_row, references, candidates) items;
    every distinct sentence is encoded once."""
    index: dict[str, int] = {}
    ids = [
        ([index.setdefault(s, len(index)) for s in refs], [index.setdefault(s, len(index)) for s in cands])
        for *_, refs, cands in items
    ]
    emb = encoder.encode(list(index)).astype(np.float64) if index else np.zeros((0, 1))
    recs = []
    for (system, split, row, _refs, _cands), (r, c) in zip(items, ids):
        k = greedy_matches(emb[r] @ emb[c].T, threshold) if r and c else 0
        recs.append(
            {
                "system": system,
                "split": split,
                "opv2_row": row,
                "evaluator": evaluator,
                "threshold": threshold,
                "k": k,
                "n": len(r),
                "ratio": k / len(r) if r else float("nan"),
                "hit_all": k == len(r),
            }
        )
    return pd.DataFrame(recs)


def rescore_nli(
    items: Sequence[Item], model: Any, evaluator: str, explanations: dict[tuple[str, int], list[str]]
) -> pd.DataFrame:
    """The NLI protocol (premise = reference explanation, hypothesis = candidate sentence; mean over references of
    the max entailment; covered if > 0.33) on the logged candidate sentences; each distinct pair classified once."""
    pair_index: dict[tuple[str, str], int] = {}
    cells_ = []
    for _s, split, row, _refs, cands in items:
        expl = explanations[(split, row)]
        cells_.append([[pair_index.setdefault((e, h), len(pair_index)) for h in cands] for e in expl])
    pairs = list(pair_index)
    probs = model.entailment([p for p, _ in pairs], [h for _, h in pairs]) if pairs else np.zeros(0)
    recs = []
    for (system, split, row, _r, cands), cell in zip(items, cells_):
        score = situation_score(probs[np.asarray(cell, dtype=int)]) if cands and cell else 0.0
        recs.append(
            {
                "system": system,
                "split": split,
                "opv2_row": row,
                "evaluator": evaluator,
                "threshold": None,
                "k": None,
                "n": len(cell),
                "ratio": score,
                "hit_all": score > NLI_THRESHOLD,
            }
        )
    return pd.DataFrame(recs)


def job_items(
    ev: Evidence, jobs: Sequence[RescoreJob], rows_per_split: int | None = None, seed: int = 0
) -> list[Item]:
    """(system, split, opv2_row, logged references, logged candidates) of each job; with ``rows_per_split`` only a
    seeded subset of situations (the same subset for every system)."""
    keep: dict[str, set[int]] | None = None
    if rows_per_split is not None:
        rng = np.random.default_rng(seed)
        keep = {}
        for split in sorted({j.split for j in jobs}):
            rows = sorted(set(ev.rows.loc[ev.rows.split == split, "opv2_row"]))
            keep[split] = set(rng.choice(rows, size=min(rows_per_split, len(rows)), replace=False).tolist())
    items = []
    for job in jobs:
        per = ev.rows[ev.rows.log == job.log]
        for lr, orow in zip(ev.parsed[job.log].rows, per["opv2_row"]):
            if keep is not None and int(orow) not in keep[job.split]:
                continue
            items.append((job.system, job.split, int(orow), lr.references, lr.candidates))
    return items


def rank_agreement(authors: pd.DataFrame, ours: pd.DataFrame) -> dict[str, Any]:
    """Kendall τ and Spearman ρ between the authors' logged scores and a re-score, over the systems both have, on the
    same situations (mean ratio per system)."""
    from scipy.stats import kendalltau, spearmanr

    j = authors.merge(ours, on=["system", "split", "opv2_row"], suffixes=("_authors", "_ours"))
    if j.empty:
        return {"systems": 0, "kendall_tau": None, "spearman_rho": None}
    m = j.groupby("system")[["ratio_authors", "ratio_ours"]].mean()
    if len(m) < 3:
        return {"systems": len(m), "kendall_tau": None, "spearman_rho": None}
    return {
        "systems": len(m),
        "kendall_tau": float(kendalltau(m.ratio_authors, m.ratio_ours).statistic),
        "spearman_rho": float(spearmanr(m.ratio_authors, m.ratio_ours).statistic),
    }


def system_scores(per: pd.DataFrame, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean score per (evaluator, system, split) and pooled 5p+10p, with bootstrap CIs."""
    out = []
    for (evaluator, system), g in per.groupby(["evaluator", "system"], sort=False):
        groups = [(s, g[g.split == s]) for s in g.split.unique()]
        if {"5p", "10p"} <= set(g.split):
            groups.append(("5p+10p", g[g.split.isin(["5p", "10p"])]))
        for split, gg in groups:
            x = gg["ratio"].to_numpy(float)
            lo, hi = bootstrap_ci(x.tolist(), reps=reps, seed=seed)
            out.append(
                {
                    "evaluator": evaluator,
                    "system": system,
                    "split": split,
                    "n": len(x),
                    "score": float(x.mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                    "absolute": float(gg["hit_all"].astype(float).mean()),
                }
            )
    return pd.DataFrame(out)


def evaluator_name(name: str) -> str:
    """Short name of an evaluator: the last part of a hub id; a local folder is named by the hub id it is the
    offline copy of (``models.OFFLINE``: the MiniLM folder is ``.../model``), else by the folder's own name."""
    if Path(name).is_dir():
        name = _hub_id_of(Path(name)) or str(Path(name).resolve())
    return name.rstrip("/").rsplit("/", 1)[-1]


def _hub_id_of(folder: Path) -> str | None:
    from ..models import OFFLINE, ModelUnavailable, local_path

    for hub_id in OFFLINE:
        try:
            local = local_path(hub_id)
        except ModelUnavailable:
            continue
        if local is not None and local.resolve() == folder.resolve():
            return hub_id
    return None
