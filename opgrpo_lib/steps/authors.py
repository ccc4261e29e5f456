"""Step 08: the authors' own per-row SBERT evaluation logs, verified, regenerated and re-scored
(``<run>/results/authors/``: per-log verdicts, per-row counts, cells, claims, re-scores; no authors' texts)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..authors.claims import (
    MAIN_SETTING,
    THREE_B_VARIANTS,
    best_three_b,
    cells,
    headline_pairs,
    paired_claims,
    unique_rows,
)
from ..authors.evidence import Evidence, load_evidence
from ..authors.rescore import (
    RescoreJob,
    evaluator_name,
    job_items,
    rank_agreement,
    rescore_jobs,
    rescore_nli,
    rescore_sbert,
    resolve_systems,
    system_scores,
)
from ..config import RunConfig
from ..data import load_test_splits
from ..lifecycle import StepRun, step_run
from ..paths import atomic_path, atomic_write_bytes, atomic_write_text
from ..runs import RunPaths
from ..text import parse_perspectives


@dataclass
class Models:
    """Every model step 08 uses, loaded before the step starts (a model that is not here refuses the start)."""

    tokenizer: Any = None
    encoders: dict[str, Any] = field(default_factory=dict)  # rescore_encoders name -> SentenceEncoder
    nli: Any = None


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """Write ``<run>/results/authors/``. Everything that can refuse (a log or OP-V2 file that fails its hash, a
    model that is not here) runs before the step is marked running: a refused run leaves the run as it was."""
    say = print if progress else (lambda _m: None)
    with step_run(cfg, paths, "authors") as step:
        with step.timed("load_and_verify"):
            test, _ = load_test_splits(cfg)
            ev = load_evidence(cfg, test, progress=say)
        models = load_models(cfg)
        step.begin()
        out = paths.results / "authors"
        out.mkdir(parents=True, exist_ok=True)
        with step.timed("tokens"):
            add_token_counts(ev, models.tokenizer)
        with step.timed("cells_and_claims"):
            cell_df, best, claims = cells_and_claims(ev.rows, cfg)
        with step.timed("rescore"):
            rescored, jobs, n_items = rescore(cfg, ev, best, test, models, step, say)
        written = write_outputs(out, ev, cell_df, claims, rescored, jobs, best, cfg.authors.bootstrap_reps, cfg.seed)
        summary = _summary(cfg, ev, cell_df, best, n_items, step.timings)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
        step.extra = {"verified_logs": summary["verified"], "logs": summary["logs"]}
    return {**summary, "written": [str(p) for p in written]}


def load_models(cfg: RunConfig) -> Models:
    """The tokenizer (token counts), the re-scoring encoders and the NLI model the profile names."""
    from ..device import resolve_device
    from ..models import resolve
    from ..nli import NLIModel
    from ..reward import SentenceEncoder

    a = cfg.authors
    models = Models()
    if a.tokenizer:
        from transformers import AutoTokenizer

        models.tokenizer = AutoTokenizer.from_pretrained(resolve(a.tokenizer))
    if a.rescore_encoders or a.rescore_nli:
        device = resolve_device(cfg)
        models.encoders = {name: SentenceEncoder(name, device=device) for name in a.rescore_encoders}
        models.nli = NLIModel(a.rescore_nli, device=device) if a.rescore_nli else None
    return models


def add_token_counts(ev: Evidence, tokenizer: Any) -> None:
    """``candidate_tokens`` of each row: tokens of its candidate sentences (each distinct sentence tokenized once)."""
    if tokenizer is None or ev.rows.empty:
        return
    distinct = sorted({c for log in ev.parsed.values() for r in log.rows for c in r.candidates})
    counts = dict(zip(distinct, (len(x) for x in tokenizer(distinct, add_special_tokens=False)["input_ids"])))
    tokens = {(name, r.row): sum(counts[c] for c in r.candidates) for name, log in ev.parsed.items() for r in log.rows}
    ev.rows["candidate_tokens"] = [int(tokens[(lg, lr)]) for lg, lr in zip(ev.rows["log"], ev.rows["logged_row"])]


def cells_and_claims(rows: pd.DataFrame, cfg: RunConfig) -> tuple[pd.DataFrame, str, pd.DataFrame | None]:
    """(every logged cell, the authors' best 3B variant, the paired headline claims)."""
    reps = cfg.authors.bootstrap_reps
    cell_df = cells(rows, reps, cfg.seed) if not rows.empty else pd.DataFrame()
    if "candidate_tokens" in rows and not cell_df.empty:
        keys = ["system", "version", "split", "evaluator", "threshold"]
        tmean = unique_rows(rows).groupby(keys, dropna=False)["candidate_tokens"].mean()
        cell_df["candidate_tokens_mean"] = [
            tmean.get((r.system, r.version, r.split, r.evaluator, r.threshold)) for r in cell_df.itertuples()
        ]
    best = best_three_b(cell_df) if not cell_df.empty else f"OP-GRPO Qwen2.5-3B {THREE_B_VARIANTS[2]}"
    claims = paired_claims(rows, headline_pairs(best), reps, cfg.seed) if not rows.empty else None
    return cell_df, best, claims


def rescore(
    cfg: RunConfig,
    ev: Evidence,
    best: str,
    test: pd.DataFrame,
    models: Models,
    step: StepRun,
    say: Callable[[str], None],
) -> tuple[list[pd.DataFrame], list[RescoreJob], int]:
    """(per-row re-scores under each encoder and the NLI model, the jobs, the number of situations re-scored)."""
    a = cfg.authors
    systems = resolve_systems(a.rescore_systems, best)
    jobs = rescore_jobs(ev, systems, a.rescore_splits) if not ev.rows.empty else []
    items = job_items(ev, jobs, a.rescore_rows_per_split, cfg.seed)
    rescored = []
    for name, encoder in models.encoders.items():
        say(f"authors: re-scoring {len(items)} situations under {name}")
        with step.timed(f"rescore:{evaluator_name(name)}"):
            rescored.append(rescore_sbert(items, encoder, a.rescore_threshold, evaluator_name(name)))
    if models.nli is not None:
        expl = {
            (s, int(i)): [e for _, e in parse_perspectives(ans)]
            for s, i, ans in zip(test["split"], test["row_index"], test["answer"])
        }
        with step.timed(f"rescore:{evaluator_name(a.rescore_nli)}"):
            rescored.append(rescore_nli(items, models.nli, f"nli:{evaluator_name(a.rescore_nli)}", expl))
    return rescored, jobs, len(items)


def _summary(
    cfg: RunConfig, ev: Evidence, cell_df: pd.DataFrame, best: str, n_items: int, timings: dict[str, float]
) -> dict[str, Any]:
    a, logs, rows = cfg.authors, ev.logs, ev.rows
    nli = [f"nli:{evaluator_name(a.rescore_nli)}"] if a.rescore_nli else []
    return {
        "logs": int(len(logs)),
        "verified": int(logs.verified.sum()) if len(logs) else 0,
        "unverified": logs.loc[~logs.verified, ["log", "reason"]].to_dict("records") if len(logs) else [],
        "rows": int(len(rows)),
        "cells": int(len(cell_df)),
        "best_three_b": best,
        "summary_csv_rows_citing_logs": ev.summary_rows,
        "rows_with_our_reference_split": int(rows["refs_as_ours"].sum()) if len(rows) else 0,
        "rescore_items": n_items,
        "rescore_evaluators": [evaluator_name(n) for n in a.rescore_encoders] + nli,
        "timings_s": timings,
    }


ROW_COLUMNS = [
    "log",
    "system",
    "version",
    "split",
    "evaluator",
    "threshold",
    "opv2_row",
    "logged_row",
    "k",
    "n",
    "n_candidate_sentences",
    "candidate_words",
]


def write_outputs(
    out: Path,
    ev: Evidence,
    cell_df: pd.DataFrame,
    claims: pd.DataFrame | None,
    rescored: list[pd.DataFrame],
    jobs: Sequence[RescoreJob],
    best: str,
    reps: int,
    seed: int,
) -> list[Path]:
    """Small CSVs only: per-log verdicts, per-row counts (no texts), cells, claims, re-scores."""
    rows = ev.rows
    written = [_put(ev.logs, out / "logs.csv")]
    if rows.empty:
        return written
    cols = ROW_COLUMNS + (["candidate_tokens"] if "candidate_tokens" in rows else [])
    written.append(_put(rows[cols], out / "rows.csv.gz"))
    written.append(_put(cell_df, out / "cells.csv"))
    if claims is not None:
        written.append(_put(claims, out / "claims.csv"))
    if rescored:
        per = pd.concat(rescored, ignore_index=True)
        written.append(_put(per, out / "rescore_rows.csv"))
        written.append(_put(system_scores(per, reps, seed), out / "rescore_scores.csv"))
        written.append(_put(paired_claims(per, headline_pairs(best), reps, seed), out / "rescore_claims.csv"))
        # the authors' logged ratio on the same situations (their main setting where logged, else any)
        authors_rows = _authors_reference_rows(rows, jobs)
        agree = [
            {"evaluator": e, **rank_agreement(authors_rows, g[["system", "split", "opv2_row", "ratio"]])}
            for e, g in per.groupby("evaluator")
        ]
        written.append(_put(pd.DataFrame(agree), out / "rank_agreement.csv"))
    return written


def _put(df: pd.DataFrame, path: Path) -> Path:
    if path.name.endswith(".gz"):  # in memory: no file name (the random temp name) and no time stamp in the header
        buf = io.BytesIO()
        df.to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
        atomic_write_bytes(path, buf.getvalue())
    else:
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    return path


def _authors_reference_rows(rows: pd.DataFrame, jobs: Sequence[RescoreJob]) -> pd.DataFrame:
    """The authors' own per-row ratio for the re-scored systems, under their main evaluator setting."""
    main = rows[(rows.evaluator == MAIN_SETTING[0]) & np.isclose(rows.threshold.astype(float), MAIN_SETTING[1])]
    want = {(j.system, j.split) for j in jobs}
    main = main[[(s, sp) in want for s, sp in zip(main.system, main.split)]]
    first = main.sort_values("log").drop_duplicates(["system", "split", "opv2_row"])
    return first[["system", "split", "opv2_row", "ratio"]]
