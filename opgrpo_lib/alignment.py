"""Does the reward see what the evaluator sees? The standard test of a learned reward before RL.

On held-out validation situations (never the evaluation split) a policy samples n completions per situation as GRPO
samples them; every completion is scored by each reward variant (its total and its coverage ladder), by the
components every variant shares (format, uniqueness) and by the independent evaluator (SBERT relative accuracy of
the core block). Per score: the best-of-n gain of picking, in each situation, the completion the score ranks first
over a random pick, under the independent evaluator (a percentile bootstrap CI over situations; the oracle pick is
the ceiling), the mean within-situation Spearman correlation with the evaluator, and (variants) the share of
completions that match no reference at all. A reward that cannot pick the better of its policy's own samples cannot
be expected to improve the policy by optimising it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .config import RewardCfg, RunConfig
from .coverage import sbert_matches
from .prompts import implicit
from .reward import CachedEncoder, Encoder, OPRewardScorer, keyword_text_for
from .stats import bootstrap_ci
from .text import check_layout

SHARED = ("format", "uniqueness")  # components that do not depend on the variant


def variant_cfgs(cfg: RunConfig, names: Sequence[str]) -> dict[str, RewardCfg]:
    """The reward of each variant: the authors' reward (the profile's weights and thresholds, options off) and one
    change each. ``agree_base``: a match must also clear the threshold under ``models.encoder``."""
    authors = dataclasses.replace(cfg.reward, mask="prompt", mask_references=False, agree_with=[], overlong_cache=0)
    changes = {
        "authors": {},
        "mask_references": {"mask_references": True},
        "unmasked": {"mask": "none"},
        "agree_base": {"agree_with": [cfg.models.encoder]},
    }
    return {name: dataclasses.replace(authors, **changes[name]) for name in names}


def score_variants(
    situations: Sequence[str],
    texts: Sequence[str],
    references: Sequence[str],
    variants: dict[str, RewardCfg],
    encoders: dict[str, Encoder],
) -> pd.DataFrame:
    """One row per completion: ``<variant>:total``, ``<variant>:coverage``, ``<variant>:matched`` and the shared
    components. ``encoders`` maps a model name to its encoder; the estimator is ``encoders["estimator"]``. Each
    distinct sentence is encoded once per encoder across all variants."""
    encoders = {name: CachedEncoder(enc) for name, enc in encoders.items()}
    out: dict[str, Any] = {}
    for name, rcfg in variants.items():
        agree = [encoders[m] for m in rcfg.agree_with]
        kts = ["" if rcfg.mask == "none" else keyword_text_for(s) for s in situations]
        parts = OPRewardScorer(encoders["estimator"], rcfg, agree).score(kts, list(texts), list(references))
        out[f"{name}:total"] = [p.total for p in parts]
        out[f"{name}:coverage"] = [p.coverage for p in parts]
        out[f"{name}:matched"] = [p.matched for p in parts]
        for comp in SHARED:
            out.setdefault(comp, [getattr(p, comp) for p in parts])
    return pd.DataFrame(out)


def evaluator_scores(
    val: pd.DataFrame, situations: Sequence[str], texts: Sequence[str], encoder: Encoder, threshold: float
) -> list[float]:
    """SBERT relative accuracy of each completion's core block (what step 06 reports); 0 for an empty one."""
    answers = dict(zip(val["prompt"], val["answer"]))
    refs = pd.DataFrame(
        {"prompt": [f"{i}\0{s}" for i, s in enumerate(situations)], "answer": [answers[s] for s in situations]}
    )
    per, _, _ = sbert_matches(refs, [check_layout(t).core for t in texts], encoder, threshold)
    ratio = dict(zip(per["prompt"], per["ratio"]))
    return [float(ratio.get(p, 0.0)) for p in refs["prompt"]]


def _pick_gain(score: np.ndarray, evaluator: np.ndarray) -> float:
    """Evaluator score of the completion ``score`` ranks first (ties: their mean) minus a random pick's."""
    top = score == score.max()
    return float(evaluator[top].mean() - evaluator.mean())


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(samples: pd.DataFrame, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per score column: best-of-n gain over a random pick under the independent evaluator with its 95 %
    bootstrap CI over situations, the mean within-situation Spearman correlation (situations where both vary), and
    the zero-coverage rate of each variant."""
    columns = [c for c in samples.columns if c.endswith((":total", ":coverage")) or c in SHARED]
    groups = [g for _, g in samples.groupby("prompt", sort=False)]
    rows = []
    for col in [*columns, "evaluator"]:
        gains = [_pick_gain(g[col].to_numpy(float), g["evaluator"].to_numpy(float)) for g in groups]
        rhos = [
            r for g in groups if (r := _spearman(g[col].to_numpy(float), g["evaluator"].to_numpy(float))) is not None
        ]
        lo, hi = bootstrap_ci(gains, reps=reps, seed=seed)
        variant, _, part = col.partition(":")
        matched = samples.get(f"{variant}:matched")
        rows.append(
            {
                "score": col,
                "variant": variant if part else "shared" if col in SHARED else "oracle",
                "situations": len(groups),
                "samples_per_situation": len(samples) / max(len(groups), 1),
                "best_of_n_gain": float(np.mean(gains)),
                "ci_low": lo,
                "ci_high": hi,
                "spearman_mean": float(np.mean(rhos)) if rhos else None,
                "spearman_situations": len(rhos),
                "zero_coverage_rate": float((matched == 0).mean()) if matched is not None else None,
            }
        )
    return pd.DataFrame(rows)


def sample_completions(
    lm: Any, situations: Sequence[str], n: int, seed: int, sampling: dict[str, Any], batch: int = 16
) -> list[str]:
    """``n`` completions per situation of the implicit prompt, row k of situation s seeded from (seed, s, k): the
    same texts in any batch (``lm.sample``)."""
    from .lm import row_seed, sample
    from .progress import emit

    prompts = [implicit(s) for s in situations for _ in range(n)]
    seeds = [row_seed(seed, s, salt=k) for s in situations for k in range(n)]
    texts: list[str] = []
    for start in range(0, len(prompts), batch):
        emit("alignment", start, len(prompts))
        end = start + batch
        texts += sample(
            lm,
            prompts[start:end],
            sampling["max_new_tokens"],
            sampling["temperature"],
            sampling["top_p"],
            None,
            seeds[start:end],
        )
    return texts
