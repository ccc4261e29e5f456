"""The verified logs joined to OP-V2 by prompt: one record per log (its verdict and header facts) and one per
logged row (per-row counts and the OP-V2 situation), with content versions and the names only the content tells."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..text import eval_reference_sentences
from .logs import (
    LogFormatError,
    ParsedLog,
    check_log,
    check_summary,
    content_id,
    evaluator_of,
    log_time,
    parse_log,
    read_summary_csvs,
    split_of_reference,
    strip_prefix,
    system_of,
)
from .sources import ManifestEntry, manifest, read_source


@dataclass
class Evidence:
    """Everything step 08 derives from the logs (texts stay in memory; only scores are written)."""

    logs: pd.DataFrame  # one row per log: verdict, header facts, system, version, content id
    rows: pd.DataFrame  # one row per (verified log, logged row): per-row counts and the OP-V2 situation
    parsed: dict[str, ParsedLog]  # verified logs only (texts for re-scoring)
    summary_rows: int = 0


def load_evidence(
    cfg: RunConfig, test: pd.DataFrame | None = None, progress: Callable[[str], None] | None = None
) -> Evidence:
    """Read, verify and join every pinned log (``authors.max_logs`` limits it); ``test`` = the OP-V2 test splits
    (``data.load_test_splits``), loaded when not given. A file that fails its hash raises (nothing is scored)."""
    from ..data import load_test_splits

    if test is None:
        test, _ = load_test_splits(cfg)
    entries = manifest()
    summaries = {e.upstream_path: read_source(e, cfg) for e in entries if e.upstream_path.endswith(".csv")}
    cited = read_summary_csvs(summaries)
    logs = sorted((e for e in entries if e.is_log), key=lambda e: e.upstream_path)
    if cfg.authors.max_logs is not None:
        logs = logs[: cfg.authors.max_logs]
    by_split = {s: g for s, g in test.groupby("split")}
    records, row_recs, parsed = [], [], {}
    for j, entry in enumerate(logs):
        if progress and j % 20 == 0:
            progress(f"authors logs: {j}/{len(logs)}")
        log, rec = _read_log(entry, cfg, cited.get(entry.upstream_path, []))
        if log is not None and not rec["reason"]:
            rec["reason"] = _join(log, by_split.get(rec["split"]), row_recs, entry.upstream_path)
        if log is not None and not rec["reason"]:
            rec.update(verified=True, content_id=content_id(log.rows))
            parsed[entry.upstream_path] = log
        records.append(rec)
    logs_df = _versions_and_names(pd.DataFrame(records), parsed)
    rows_df = pd.DataFrame(row_recs)
    if not rows_df.empty:
        keep = ["log", "system", "family", "rl_step", "version", "evaluator", "threshold", "content_id"]
        rows_df = rows_df.merge(logs_df.loc[logs_df.verified, keep], on="log", how="left")
    return Evidence(logs_df, rows_df, parsed, len(cited))


def _read_log(
    entry: ManifestEntry, cfg: RunConfig, cited: list[dict[str, str]]
) -> tuple[ParsedLog | None, dict[str, Any]]:
    """(the parsed log or None, its record: verdict and header facts) of one pinned log."""
    name = entry.upstream_path
    raw = read_source(entry, cfg)
    try:
        log = parse_log(raw.decode("utf-8"), name)
        reason = check_log(log) or check_summary(log, cited)
    except (LogFormatError, UnicodeDecodeError) as exc:
        log, reason = None, str(exc).removeprefix(f"{name}: ")
    rec: dict[str, Any] = {"log": name, "verified": False, "reason": reason, "rows": len(log.rows) if log else 0}
    if log is not None and "CANDIDATE_CSV" in log.header:
        h = log.header
        system, family, step = system_of(h["CANDIDATE_CSV"])
        rec.update(
            candidate_file=strip_prefix(h["CANDIDATE_CSV"]),
            system=system,
            family=family,
            rl_step=step,
            split=split_of_reference(h.get("REFERENCE_CSV", "")),
            evaluator=evaluator_of(h.get("SBERT_PATH", "")),
            threshold=float(h.get("THRESHOLD", "nan") or "nan"),
            mode=h.get("MODE", ""),
            time=log_time(name),
            summary_csv=";".join(sorted({c["summary_csv"] for c in cited})),
        )
    return log, rec


def _join(log: ParsedLog, split_df: pd.DataFrame | None, out: list[dict[str, Any]], name: str) -> str:
    """Per-row records joined to OP-V2 by prompt; '' or the reason the log cannot be joined."""
    if split_df is None:
        return "its REFERENCE_CSV split is not an OP-V2 test split here"
    index = {p: int(i) for i, p in zip(split_df["row_index"], split_df["prompt"])}
    answers = dict(zip(split_df["row_index"], split_df["answer"]))
    recs, seen = [], set()
    for r in log.rows:
        i = index.get(r.prompt)
        if i is None:
            return f"row {r.row}: prompt {r.prompt[:50]!r} is not an OP-V2 situation of its split"
        if i in seen:
            return f"row {r.row}: duplicate prompt {r.prompt[:50]!r}"
        seen.add(i)
        recs.append(
            {
                "log": name,
                "split": split_df["split"].iloc[0],
                "opv2_row": i,
                "logged_row": r.row,
                "k": r.k,
                "n": r.n,
                "ratio": r.k / r.n,
                "hit_all": r.k == r.n,
                "n_candidate_sentences": len(r.candidates),
                "candidate_words": sum(len(c.split()) for c in r.candidates),
                "refs_as_ours": r.references == eval_reference_sentences(answers[i]),
            }
        )
    out.extend(recs)
    return ""


def _versions_and_names(logs: pd.DataFrame, parsed: dict[str, ParsedLog]) -> pd.DataFrame:
    """Content versions (A, B, … by first log time) of each candidate path scored with different contents, and
    names that only the content tells: refine files that hold raw outputs, core vs summary of one file."""
    logs = logs.copy()
    logs["version"] = ""
    ok = logs[logs.verified] if "verified" in logs else logs.iloc[0:0]
    for _cand, grp in ok.sort_values("time").groupby("candidate_file", sort=False):
        ids = list(dict.fromkeys(grp["content_id"]))
        if len(ids) > 1:
            labels = {c: chr(ord("A") + i) for i, c in enumerate(ids)}
            logs.loc[grp.index, "version"] = grp["content_id"].map(labels)
    raw_ids = set(ok.loc[ok.system == "ModPlural raw", "content_id"])
    for idx in ok.index[(ok.system == "ModPlural refine") & ok.content_id.isin(raw_ids)]:
        logs.loc[idx, "system"] = "ModPlural refine [file holds raw outputs]"
    for idx in ok.index[ok.system == "OP-GRPO Qwen2.5-3B summary-format 30-step"]:
        rows = parsed[logs.loc[idx, "log"]].rows
        share = np.mean(
            [bool(r.candidates) and r.candidates[0].lower().startswith("in the perspective of") for r in rows]
        )
        logs.loc[idx, "system"] += " (core)" if share > 0.5 else " (summary)"
    return logs
