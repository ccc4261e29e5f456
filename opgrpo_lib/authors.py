"""Step 08: the authors' own per-row SBERT evaluation logs as evidence.

The logs (``benchmark_new/summary_eval/eval_logs_*`` of the authors' repository, pinned commit) are read from a
local folder or downloaded file by file and checked by git blob sha1, parsed with our own parser, verified against
their footers and the summary CSVs that cite them, joined to OP-V2 by prompt, and turned into per-row scores. From
those: every logged cell with a bootstrap CI, the paired headline claims, re-scoring under evaluators the authors did
not use (same protocol: greedy one-to-one matching at a threshold, the authors' reference splitting, on the logged
candidate sentences), and ``opgrpo compare`` (a user's outputs beside every authors' system).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import REPO_ROOT, RunConfig
from .data import DataIntegrityError, RemoteFile, cache_dir, download, verify_bytes
from .runs import locked
from .stats import bootstrap_ci, paired_bootstrap

ENV_AUTHORS_LOGS = "OPGRPO_AUTHORS_LOGS"
UPSTREAM_DIR = "benchmark_new/summary_eval"
MANIFEST_PATH = Path(__file__).resolve().parent / "resources" / "authors_eval_logs_manifest.tsv"
MAIN_SETTING = ("op-sbert-scale70", 0.70)  # the authors' main evaluator: their fine-tuned estimator (= reward model)
PREFIXES = ("/home/zczlyf7/Overton-PPO/", "/p/project1/westai0052/self_rewarding/verl/")
THREE_B_VARIANTS = ("ex", "im", "im-rewarddown", "im-rewarddown-unique")
BASELINES = ("Qwen3-8B explicit", "Qwen3-8B implicit", "ModPlural raw", "ModPlural refine",
             "Qwen2.5-1.5B-Instruct explicit", "Qwen2.5-1.5B-Instruct implicit")  # fmt: skip
STEP_MODELS = ("Qwen2.5-1.5B", "Llama-3.2-3B")


class LogFormatError(ValueError):
    """A file is not an authors' evaluation log (or is cut in a way the parser cannot read)."""


# ---------------------------------------------------------------- source: manifest, local folder, cache, download
@dataclass(frozen=True)
class ManifestEntry:
    upstream_path: str  # relative to benchmark_new/summary_eval/
    stored_as: str  # file name in the local folder (``.gz`` = gzip of the upstream bytes)
    git_sha1: str
    sha256: str
    size: int

    @property
    def is_log(self) -> bool:
        return self.upstream_path.endswith(".log")

    @property
    def remote(self) -> RemoteFile:
        return RemoteFile(f"{UPSTREAM_DIR}/{self.upstream_path}", self.git_sha1, self.sha256)


def manifest(path: Path = MANIFEST_PATH) -> list[ManifestEntry]:
    """The pinned files (upstream path, git blob sha1, sha256, size), in manifest order."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [ManifestEntry(r["upstream_path"], r["stored_as"], r["git_blob_sha1"], r["sha256"], int(r["bytes"]))
            for r in rows]  # fmt: skip


def local_dir(cfg: RunConfig) -> Path | None:
    raw = os.environ.get(ENV_AUTHORS_LOGS) or cfg.authors.local_dir
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def read_source(entry: ManifestEntry, cfg: RunConfig) -> bytes:
    """The verified upstream bytes of one file: local folder, then the cache, then a download from the pinned
    commit. A file that fails its hash raises :class:`DataIntegrityError` naming it; nothing of it is cached."""
    name = entry.upstream_path
    tried = []
    ldir = local_dir(cfg)
    if ldir is not None:
        path = ldir / Path(name).parent / entry.stored_as
        if path.exists():
            raw = path.read_bytes()
            if entry.stored_as.endswith(".gz"):
                try:
                    raw = gzip.decompress(raw)
                except (OSError, EOFError) as exc:
                    raise DataIntegrityError(f"{path}: not a readable gzip file ({exc})") from exc
            verify_bytes(name, raw, str(path), entry.remote)
            return raw
        tried.append(str(path))
    cached = cache_dir() / "authors-eval-logs" / cfg.authors.commit / name
    if cached.exists():
        raw = cached.read_bytes()
        verify_bytes(name, raw, str(cached), entry.remote)
        return raw
    tried.append(str(cached))
    if not cfg.authors.download:
        raise FileNotFoundError(f"{name}: not found (tried {tried}) and authors.download is false")
    try:
        return download(Path(name).name, cfg.authors.base_url, cfg.authors.commit, cached.parent,
                        spec=entry.remote).read_bytes()  # fmt: skip
    except OSError as exc:
        raise FileNotFoundError(
            f"{name}: not found locally (tried {tried}) and the download failed ({exc}); set {ENV_AUTHORS_LOGS} to a "
            "folder holding the authors' evaluation logs or allow network access"
        ) from exc


# ---------------------------------------------------------------- parser
@dataclass
class LogRow:
    row: int  # row of the reference CSV
    prompt: str
    references: list[str]
    candidates: list[str]
    matches: list[tuple[int, int, float]]  # (reference no., candidate no., cosine), 1-based as logged
    k: int
    n: int
    declared_refs: int
    declared_cands: int
    all_flag: bool


@dataclass
class ParsedLog:
    name: str
    header: dict[str, str]
    loaded: dict[str, int]
    rows: list[LogRow]
    footer: dict[str, float] | None


_HEADER_RE = re.compile(r"^\s*([A-Z_]+) : (.*)$")
_LOADED_RE = re.compile(r"^Loaded (\d+) (reference|candidate) samples$")
_ROW_RE = re.compile(r"^=== Row (\d+) ===$")
_REF_HEAD_RE = re.compile(r"^Ref \((\d+)\):$")
_CAND_HEAD_RE = re.compile(r"^Cand\((\d+)\):$")
_ITEM_RE = re.compile(r"^  \[([RC])(\d+)\] ?(.*)$")
_MATCH_RE = re.compile(r"^  ✔ R(\d+) ↔ C(\d+)  sim=(-?[\d.]+)$")
_MATCHED_RE = re.compile(r"^Matched (\d+)/(\d+) → (✓ ALL|✗)$")
_ABS_RE = re.compile(r"^Absolute Accuracy = ([\d.]+)  \((\d+)/(\d+)\)$")
_REL_RE = re.compile(r"^Relative Accuracy = ([\d.]+)  \(average matched ratio\)$")


def parse_log(text: str, name: str = "<log>") -> ParsedLog:
    """Parse one log (format: ``../shared/data/authors-eval-logs/README.md``). Raises :class:`LogFormatError` when
    the file is not such a log; a log cut short parses with ``footer=None``."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != "=== Static parameters ===":
        raise LogFormatError(f"{name}: not an authors' evaluation log (no '=== Static parameters ===' header)")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and lines[i].strip():
        m = _HEADER_RE.match(lines[i])
        if not m:
            raise LogFormatError(f"{name}: line {i + 1}: unreadable header line {lines[i][:60]!r}")
        header[m.group(1)] = m.group(2).strip()
        i += 1
    log = ParsedLog(name, header, {}, _row_blocks(lines[i:]), None)
    footer: dict[str, float] = {}
    for line in lines[i:]:
        if m := _LOADED_RE.match(line):
            log.loaded[m.group(2)] = int(m.group(1))
        elif m := _ABS_RE.match(line):
            footer.update(absolute=float(m.group(1)), hit_all=int(m.group(2)), total=int(m.group(3)))
        elif m := _REL_RE.match(line):
            footer["relative"] = float(m.group(1))
    log.footer = footer if {"absolute", "hit_all", "total", "relative"} <= set(footer) else None
    return log


def _row_blocks(lines: Iterable[str]) -> list[LogRow]:
    """The rows of a log: a line-by-line state machine; a line that matches no pattern continues the prompt,
    reference or candidate before it (texts with newlines inside). A row without its ``Matched`` line is dropped
    (the footer check then fails: a cut log is never used)."""
    out: list[LogRow] = []
    cur: dict[str, Any] | None = None
    section = ""
    for line in lines:
        if m := _ROW_RE.match(line):
            cur = {"row": int(m.group(1)), "prompt": [], "refs": [], "cands": [], "matches": [], "dr": -1, "dc": -1}
            section = "prompt_wait"
            continue
        if cur is None:
            continue
        if section == "prompt_wait":
            if line.startswith("[PROMPT]"):
                cur["prompt"].append(line[9:])
                section = "prompt"
            continue
        if m := _REF_HEAD_RE.match(line):
            cur["dr"], section = int(m.group(1)), "refs"
        elif m := _CAND_HEAD_RE.match(line):
            cur["dc"], section = int(m.group(1)), "cands"
        elif section in ("refs", "cands", "matches") and (m := _MATCH_RE.match(line)):
            cur["matches"].append((int(m.group(1)), int(m.group(2)), float(m.group(3))))
            section = "matches"
        elif m := _MATCHED_RE.match(line):
            out.append(LogRow(cur["row"], "\n".join(cur["prompt"]).strip(),
                              ["\n".join(x).strip() for x in cur["refs"]], ["\n".join(x).strip() for x in cur["cands"]],
                              cur["matches"], int(m.group(1)), int(m.group(2)), cur["dr"], cur["dc"],
                              m.group(3).startswith("✓")))  # fmt: skip
            cur, section = None, ""
        elif section in ("refs", "cands") and (m := _ITEM_RE.match(line)):
            (cur["refs"] if m.group(1) == "R" else cur["cands"]).append([m.group(3)])
        elif section == "prompt":
            cur["prompt"].append(line)
        elif section in ("refs", "cands") and cur[section]:
            cur[section][-1].append(line)
    return out


# ---------------------------------------------------------------- header facts
def strip_prefix(path: str) -> str:
    for p in PREFIXES:
        if path.startswith(p):
            return path[len(p) :]
    return path


def split_of_reference(path: str) -> str | None:
    m = re.search(r"test_(\w+)\.csv$", path)
    return m.group(1) if m else None


def evaluator_of(sbert_path: str) -> str:
    """The evaluator named by ``SBERT_PATH``: the authors' fine-tuned estimator (scale 70 / 40) or a base model."""
    if "hpo_scale_70" in sbert_path or sbert_path.rstrip("/").endswith("st-scale70"):
        return "op-sbert-scale70"
    if "hpo_scale_40" in sbert_path:
        return "op-sbert-scale40"
    return sbert_path.rstrip("/").rsplit("/", 1)[-1]


def system_of(candidate_path: str) -> tuple[str, str, int | None]:
    """(system, family, RL step) from the header's candidate path (the file names of the summary CSVs lie)."""
    rel = strip_prefix(candidate_path)
    if m := re.match(r"steps_results/(llama|qwen1\.5b)/(\d+)steps/", rel):
        model = "Llama-3.2-3B" if m.group(1) == "llama" else "Qwen2.5-1.5B"
        return f"OP-GRPO {model} step {int(m.group(2))}", "op-grpo", int(m.group(2))
    if m := re.match(r"op-grpo-results/qwen2\.5-3b-([\w.-]+)/", rel):
        return f"OP-GRPO Qwen2.5-3B {m.group(1)}", "op-grpo", None
    if m := re.match(r"op-grpo-results/qwen2\.5-1\.5b-([\w.-]+)/", rel):
        return f"OP-GRPO Qwen2.5-1.5B {m.group(1)}", "op-grpo", None
    if m := re.match(r"(workflow(?:_350)?)/Qwen3-8B/(explicit|implicit)/", rel):
        return f"Qwen3-8B {m.group(2)}" + (" [workflow_350]" if m.group(1) == "workflow_350" else ""), \
            "prompting-baseline", None  # fmt: skip
    if m := re.match(r"workflow/Qwen2\.5-1\.5B-Instruct/(explicit|implicit)/", rel):
        return f"Qwen2.5-1.5B-Instruct {m.group(1)}", "base", None
    if rel.startswith(("modular_pluralism/merge_output/", "workflow/modular_pluralism/raw/")):
        return "ModPlural raw", "modplural", None
    if m := re.match(r"workflow/modular_pluralism/(refine(?:_\w+)?)/", rel):
        return f"ModPlural {m.group(1)}", "modplural", None
    if rel.startswith("benchmark_new/extract/grpo_eval_summaries_clean"):
        return "OP-GRPO Qwen2.5-3B summary-format 30-step", "op-grpo", None
    if rel.startswith("summary/evaluate/sft_eval_summaries_RL2"):
        return "Unidentified summary-format model (sft_eval_summaries_RL2)", "unknown", None
    return rel, "unknown", None


def log_time(name: str) -> str:
    m = re.search(r"(\d{4}_\d{6})", name)
    return m.group(1) if m else name


def content_id(rows: Sequence[LogRow]) -> str:
    """Identity of the scored candidate content: the prompts and candidate sentences of every row."""
    h = hashlib.sha1()
    for r in rows:
        h.update(r.prompt.encode() + b"\x00" + "\x01".join(r.candidates).encode() + b"\x02")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- verification
@dataclass
class Verdict:
    log: str
    verified: bool
    reason: str
    header: dict[str, str]
    rows: int


def check_log(log: ParsedLog) -> str:
    """'' when the log reproduces its own footer, else the first reason it does not."""
    for key in ("REFERENCE_CSV", "CANDIDATE_CSV", "SBERT_PATH", "THRESHOLD"):
        if key not in log.header:
            return f"header has no {key}"
    if split_of_reference(log.header["REFERENCE_CSV"]) is None:
        return f"REFERENCE_CSV is not a test_<split>.csv: {log.header['REFERENCE_CSV']}"
    try:
        float(log.header["THRESHOLD"])
    except ValueError:
        return f"THRESHOLD is not a number: {log.header['THRESHOLD']!r}"
    if log.footer is None:
        return f"no totals (aborted run after {len(log.rows)} rows)"
    if not log.rows:
        return "no rows"
    for r in log.rows:
        if r.k != len(r.matches):
            return f"row {r.row}: Matched {r.k} but {len(r.matches)} match lines"
        if r.n != len(r.references) or r.declared_refs != r.n:
            return f"row {r.row}: {r.n} references counted, {len(r.references)} listed"
        if r.declared_cands != len(r.candidates):
            return f"row {r.row}: Cand({r.declared_cands}) but {len(r.candidates)} listed"
        if r.k > r.n or r.all_flag != (r.k == r.n):
            return f"row {r.row}: inconsistent Matched {r.k}/{r.n}"
    f = log.footer
    hit = sum(r.k == r.n for r in log.rows)
    rel = float(np.mean([r.k / r.n for r in log.rows]))
    if f["total"] != len(log.rows):
        return f"footer total {f['total']} != {len(log.rows)} rows"
    if f["hit_all"] != hit:
        return f"footer hit_all {f['hit_all']} != {hit} rows with k = n"
    if abs(round(rel, 4) - f["relative"]) > 1e-9 and abs(rel - f["relative"]) > 0.5e-4 + 1e-12:
        return f"footer relative accuracy {f['relative']} != {rel:.6f} from the rows"
    if abs(hit / len(log.rows) - f["absolute"]) > 0.5e-4 + 1e-12:
        return f"footer absolute accuracy {f['absolute']} != {hit}/{len(log.rows)}"
    return ""


def read_summary_csvs(texts: dict[str, bytes]) -> dict[str, list[dict[str, str]]]:
    """Summary-CSV rows by the log they cite (``eval_logs_*/<log>.log``), each with its CSV name."""
    cited: dict[str, list[dict[str, str]]] = {}
    for name, raw in texts.items():
        for rec in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
            if rec.get("log_path"):
                cited.setdefault(rec["log_path"], []).append({**rec, "summary_csv": name})
    return cited


def check_summary(log: ParsedLog, cited: list[dict[str, str]]) -> str:
    """'' when every summary-CSV row citing this log agrees with it (totals, hit_all, full-precision relative)."""
    hit = sum(r.k == r.n for r in log.rows)
    rel = float(np.mean([r.k / r.n for r in log.rows]))
    for rec in cited:
        where = f"summary CSV {rec['summary_csv']}"
        try:
            total, hit_all, rel_csv = int(rec["total"]), int(rec["hit_all"]), float(rec["relative_accuracy"])
        except (KeyError, ValueError) as exc:
            return f"{where}: unreadable row ({exc})"
        if total != len(log.rows) or hit_all != hit:
            return f"{where} disagrees: total/hit_all {total}/{hit_all} vs {len(log.rows)}/{hit} in the log"
        if abs(rel_csv - rel) > 1e-9:
            return f"{where} disagrees: relative_accuracy {rel_csv} vs {rel} from the log rows"
        if rec.get("candidate_csv") and rec["candidate_csv"] != log.header.get("CANDIDATE_CSV"):
            return f"{where} disagrees: candidate_csv {rec['candidate_csv']} vs the header's"
    return ""


# ---------------------------------------------------------------- building the evidence
@dataclass
class Evidence:
    """Everything step 08 derives from the logs (texts stay in memory; only scores are written)."""

    logs: pd.DataFrame  # one row per log: verdict, header facts, system, version, content id
    rows: pd.DataFrame  # one row per (verified log, logged row): per-row counts and the OP-V2 situation
    parsed: dict[str, ParsedLog]  # verified logs only (texts for re-scoring)
    summary_rows: int = 0


def load_evidence(cfg: RunConfig, test: pd.DataFrame | None = None,
                  progress: Callable[[str], None] | None = None) -> Evidence:  # fmt: skip
    """Read, verify and join every pinned log (``authors.max_logs`` limits it); ``test`` = the OP-V2 test splits
    (``data.load_test_splits``), loaded when not given."""
    from .data import load_test_splits

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
        raw = read_source(entry, cfg)
        try:
            log = parse_log(raw.decode("utf-8"), entry.upstream_path)
            reason = check_log(log) or check_summary(log, cited.get(entry.upstream_path, []))
        except (LogFormatError, UnicodeDecodeError) as exc:
            log, reason = None, str(exc).removeprefix(f"{entry.upstream_path}: ")
        rec: dict[str, Any] = {"log": entry.upstream_path, "verified": False, "reason": reason,
                               "rows": len(log.rows) if log else 0}  # fmt: skip
        if log is not None and "CANDIDATE_CSV" in log.header:
            system, family, step = system_of(log.header["CANDIDATE_CSV"])
            rec.update(candidate_file=strip_prefix(log.header["CANDIDATE_CSV"]), system=system, family=family,
                       rl_step=step, split=split_of_reference(log.header.get("REFERENCE_CSV", "")),
                       evaluator=evaluator_of(log.header.get("SBERT_PATH", "")),
                       threshold=float(log.header.get("THRESHOLD", "nan") or "nan"),
                       mode=log.header.get("MODE", ""), time=log_time(entry.upstream_path),
                       summary_csv=";".join(sorted({c["summary_csv"] for c in cited.get(entry.upstream_path, [])})))  # fmt: skip
        if log is not None and not reason:
            reason = _join(log, by_split.get(rec["split"]), row_recs, entry.upstream_path)
            rec["reason"] = reason
        if log is not None and not reason:
            rec.update(verified=True, content_id=content_id(log.rows))
            parsed[entry.upstream_path] = log
        records.append(rec)
    logs_df = pd.DataFrame(records)
    rows_df = pd.DataFrame(row_recs)
    logs_df = _versions_and_names(logs_df, parsed)
    if not rows_df.empty:
        keep = ["log", "system", "family", "rl_step", "version", "evaluator", "threshold", "content_id"]
        rows_df = rows_df.merge(logs_df.loc[logs_df.verified, keep], on="log", how="left")
    return Evidence(logs_df, rows_df, parsed, len(cited))


def _join(log: ParsedLog, split_df: pd.DataFrame | None, out: list[dict[str, Any]], name: str) -> str:
    """Per-row records joined to OP-V2 by prompt; '' or the reason the log cannot be joined."""
    if split_df is None:
        return "its REFERENCE_CSV split is not an OP-V2 test split here"
    index = {p: int(i) for i, p in zip(split_df["row_index"], split_df["prompt"])}
    answers = dict(zip(split_df["row_index"], split_df["answer"]))
    from .text import eval_reference_sentences

    recs, seen = [], set()
    for r in log.rows:
        i = index.get(r.prompt)
        if i is None:
            return f"row {r.row}: prompt {r.prompt[:50]!r} is not an OP-V2 situation of its split"
        if i in seen:
            return f"row {r.row}: duplicate prompt {r.prompt[:50]!r}"
        seen.add(i)
        words = sum(len(c.split()) for c in r.candidates)
        recs.append({"log": name, "split": split_df["split"].iloc[0], "opv2_row": i, "logged_row": r.row,
                     "k": r.k, "n": r.n, "ratio": r.k / r.n, "hit_all": r.k == r.n,
                     "n_candidate_sentences": len(r.candidates), "candidate_words": words,
                     "refs_as_ours": r.references == eval_reference_sentences(answers[i])})  # fmt: skip
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
        share = np.mean([bool(r.candidates) and r.candidates[0].lower().startswith("in the perspective of")
                         for r in rows])  # fmt: skip
        logs.loc[idx, "system"] += " (core)" if share > 0.5 else " (summary)"
    return logs


# ---------------------------------------------------------------- cells, claims
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
        logs_of = rows[(rows.content_id.isin(set(g.content_id))) & (rows.system == key[0]) & (rows.evaluator == key[5])
                       & (rows.threshold == key[6])]["log"].unique()  # fmt: skip
        out.append({**dict(zip(keys, key)), "n": len(g), "hit_all": int(hit.sum()),
                    "relative_accuracy": float(ratio.mean()), "relative_ci_low": lo, "relative_ci_high": hi,
                    "absolute_accuracy": float(hit.mean()), "absolute_ci_low": alo, "absolute_ci_high": ahi,
                    "candidate_words_mean": float(g["candidate_words"].mean()),
                    "candidate_sentences_mean": float(g["n_candidate_sentences"].mean()),
                    "logs": ";".join(sorted(logs_of))})  # fmt: skip
    return pd.DataFrame(out)


def setting_label(evaluator: str, threshold: float) -> str:
    return f"{evaluator} @ {threshold:.2f}"


def best_three_b(cell_df: pd.DataFrame) -> str:
    """The authors' best OP-GRPO Qwen2.5-3B variant: highest relative accuracy pooled over 5p + 10p under their
    main evaluator (scale-70 @ 0.70)."""
    main = cell_df[(cell_df.evaluator == MAIN_SETTING[0]) & np.isclose(cell_df.threshold, MAIN_SETTING[1])
                   & cell_df.split.isin(["5p", "10p"])]  # fmt: skip
    cand = main[main.system.isin([f"OP-GRPO Qwen2.5-3B {v}" for v in THREE_B_VARIANTS])]
    if cand.empty:
        return f"OP-GRPO Qwen2.5-3B {THREE_B_VARIANTS[2]}"
    pooled = cand.groupby("system").apply(lambda g: (g.relative_accuracy * g.n).sum() / g.n.sum(),
                                          include_groups=False)  # fmt: skip
    return str(pooled.idxmax())


def headline_pairs(best: str) -> list[tuple[str, str]]:
    pairs = [(best, b) for b in BASELINES]
    pairs += [(f"OP-GRPO {m} step 150", f"OP-GRPO {m} step 0") for m in STEP_MODELS]
    return pairs


def paired_claims(rows: pd.DataFrame, pairs: Sequence[tuple[str, str]], reps: int = 2000, seed: int = 0,
                  score: str = "ratio", setting_cols: Sequence[str] = ("evaluator", "threshold")) -> pd.DataFrame:  # fmt: skip
    """Paired differences a − b on the situations both systems were scored on, per split, pooled over 5p + 10p and
    pooled over every common split, for each evaluator setting; paired bootstrap CIs over situations."""
    rows = unique_rows(rows) if "content_id" in rows else rows
    # one content version per (system, split, setting): the earliest
    rows = (rows.sort_values("log") if "log" in rows else rows).drop_duplicates(
        ["system", "split", *setting_cols, "opv2_row"])  # fmt: skip
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
                out.append({**dict(zip(setting_cols, setting)), "a": a, "b": b, "split": label, "n": len(jj),
                            "score_a": float(xa.mean()), "score_b": float(xb.mean()), **res,
                            "relative_gain": float(xa.mean() / xb.mean() - 1) if xb.mean() else float("nan")})  # fmt: skip
    return pd.DataFrame(out)


# ---------------------------------------------------------------- re-scoring under other evaluators
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


def resolve_systems(names: Sequence[str], best: str) -> list[str]:
    out = []
    for n in names:
        if n == "headline":
            out += [best, *BASELINES] + [f"OP-GRPO {m} step {s}" for m in STEP_MODELS for s in (0, 150)]
        else:
            out.append(n)
    return list(dict.fromkeys(out))


def rescore_sbert(items: Sequence[tuple[str, str, int, list[str], list[str]]], encoder: Any, threshold: float,
                  evaluator: str) -> pd.DataFrame:  # fmt: skip
    """Greedy one-to-one matching at ``threshold`` for (system, split, opv2_row, references, candidates) items;
    every distinct sentence is encoded once."""
    from .reward import greedy_matches

    index: dict[str, int] = {}
    ids = [([index.setdefault(s, len(index)) for s in refs], [index.setdefault(s, len(index)) for s in cands])
           for *_, refs, cands in items]  # fmt: skip
    emb = encoder.encode(list(index)).astype(np.float64) if index else np.zeros((0, 1))
    recs = []
    for (system, split, row, _refs, _cands), (r, c) in zip(items, ids):
        k = greedy_matches(emb[r] @ emb[c].T, threshold) if r and c else 0
        recs.append({"system": system, "split": split, "opv2_row": row, "evaluator": evaluator,
                     "threshold": threshold, "k": k, "n": len(r), "ratio": k / len(r) if r else float("nan"),
                     "hit_all": k == len(r)})  # fmt: skip
    return pd.DataFrame(recs)


def rescore_nli(items: Sequence[tuple[str, str, int, list[str], list[str]]], model: Any, evaluator: str,
                explanations: dict[tuple[str, int], list[str]]) -> pd.DataFrame:  # fmt: skip
    """The NLI protocol (premise = reference explanation, hypothesis = candidate sentence; mean over references of
    the max entailment; covered if > 0.33) on the logged candidate sentences; each distinct pair classified once."""
    from .evaluate import NLI_THRESHOLD, situation_score

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
        recs.append({"system": system, "split": split, "opv2_row": row, "evaluator": evaluator, "threshold": None,
                     "k": None, "n": len(cell), "ratio": score, "hit_all": score > NLI_THRESHOLD})  # fmt: skip
    return pd.DataFrame(recs)


def job_items(ev: Evidence, jobs: Sequence[RescoreJob], rows_per_split: int | None = None,
              seed: int = 0) -> list[tuple[str, str, int, list[str], list[str]]]:  # fmt: skip
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


def naive_rescore(ev: Evidence, jobs: Sequence[RescoreJob], encoder: Any, threshold: float) -> pd.DataFrame:
    """The straightforward per-log loop (each log's rows encoded on their own): the benchmark's baseline."""
    from .reward import greedy_matches

    recs = []
    for job in jobs:
        per = ev.rows[ev.rows.log == job.log]
        for lr, orow in zip(ev.parsed[job.log].rows, per["opv2_row"]):
            er, ec = encoder.encode(lr.references).astype(np.float64), encoder.encode(lr.candidates).astype(np.float64)
            k = greedy_matches(er @ ec.T, threshold) if len(lr.candidates) else 0
            recs.append({"system": job.system, "split": job.split, "opv2_row": int(orow), "k": k})
    return pd.DataFrame(recs)


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
    return {"systems": len(m), "kendall_tau": float(kendalltau(m.ratio_authors, m.ratio_ours).statistic),
            "spearman_rho": float(spearmanr(m.ratio_authors, m.ratio_ours).statistic)}  # fmt: skip


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
            out.append({"evaluator": evaluator, "system": system, "split": split, "n": len(x),
                        "score": float(x.mean()), "ci_low": lo, "ci_high": hi,
                        "absolute": float(gg["hit_all"].astype(float).mean())})  # fmt: skip
    return pd.DataFrame(out)


def _encoder(name: str, device: str | None = None) -> Any:
    from .reward import SentenceEncoder

    if name.startswith("tiny:"):
        from .tiny import materialize

        return SentenceEncoder(str(materialize(name)), device=device)
    return SentenceEncoder(name, device=device)


def _nli(name: str, device: str | None = None) -> Any:
    from .evaluate import NLIModel

    if name.startswith("tiny:"):
        from .tiny import materialize

        return NLIModel(str(materialize(name)), device=device)
    return NLIModel(name, device=device)


def evaluator_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def token_counts(ev: Evidence, tokenizer_name: str | None) -> pd.Series | None:
    """Tokens of the candidate sentences per (log, logged row) with one tokenizer; each distinct sentence once."""
    if not tokenizer_name:
        return None
    from transformers import AutoTokenizer

    from .models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(tokenizer_name))
    distinct = sorted({c for log in ev.parsed.values() for r in log.rows for c in r.candidates})
    counts = dict(zip(distinct, (len(x) for x in tok(distinct, add_special_tokens=False)["input_ids"])))
    vals = {}
    for name, log in ev.parsed.items():
        for r in log.rows:
            vals[(name, r.row)] = sum(counts[c] for c in r.candidates)
    return pd.Series(vals)


# ---------------------------------------------------------------- step 08
@locked("step 08 (authors)")
def run(cfg: RunConfig, paths: Any, progress: bool = True) -> dict[str, Any]:
    """Step 08: write ``<run>/results/authors/`` (per-row scores, cells, claims, re-scores; no authors' texts)."""
    from .data import load_test_splits
    from .provenance import mark
    from .runs import atomic_write_text, timed, write_manifest

    out = paths.results / "authors"
    step_dir = paths.step("authors")
    step_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    mark(step_dir, cfg, "authors", "running")
    timings: dict[str, float] = {}
    say = print if progress else (lambda _m: None)
    a = cfg.authors
    with timed(timings, "load_and_verify"):
        test, _ = load_test_splits(cfg)
        ev = load_evidence(cfg, test, progress=say)
    logs, rows = ev.logs, ev.rows
    with timed(timings, "tokens"):
        tokens = token_counts(ev, a.tokenizer)
        if tokens is not None and not rows.empty:
            rows["candidate_tokens"] = [int(tokens[(lg, lr)]) for lg, lr in zip(rows["log"], rows["logged_row"])]
    with timed(timings, "cells_and_claims"):
        cell_df = cells(rows, a.bootstrap_reps, cfg.seed) if not rows.empty else pd.DataFrame()
        if "candidate_tokens" in rows and not cell_df.empty:
            tmean = unique_rows(rows).groupby(["system", "version", "split", "evaluator", "threshold"],
                                              dropna=False)["candidate_tokens"].mean()  # fmt: skip
            cell_df["candidate_tokens_mean"] = [tmean.get((r.system, r.version, r.split, r.evaluator, r.threshold))
                                                for r in cell_df.itertuples()]  # fmt: skip
        best = best_three_b(cell_df) if not cell_df.empty else f"OP-GRPO Qwen2.5-3B {THREE_B_VARIANTS[2]}"
        claims = paired_claims(rows, headline_pairs(best), a.bootstrap_reps, cfg.seed) if not rows.empty else None
    rescored = []
    with timed(timings, "rescore"):
        systems = resolve_systems(a.rescore_systems, best)
        jobs = rescore_jobs(ev, systems, a.rescore_splits) if not rows.empty else []
        items = job_items(ev, jobs, a.rescore_rows_per_split, cfg.seed)
        for name in a.rescore_encoders:
            say(f"authors: re-scoring {len(items)} situations under {name}")
            with timed(timings, f"rescore:{evaluator_name(name)}"):
                rescored.append(rescore_sbert(items, _encoder(name, _device(cfg)), a.rescore_threshold,
                                              evaluator_name(name)))  # fmt: skip
        if a.rescore_nli:
            expl = _explanations(test)
            with timed(timings, f"rescore:{evaluator_name(a.rescore_nli)}"):
                rescored.append(rescore_nli(items, _nli(a.rescore_nli, _device(cfg)),
                                            f"nli:{evaluator_name(a.rescore_nli)}", expl))  # fmt: skip
    written = write_outputs(out, logs, rows, cell_df, claims, rescored, jobs, ev, best, a.bootstrap_reps, cfg.seed)
    summary = {"logs": int(len(logs)), "verified": int(logs.verified.sum()) if len(logs) else 0,
               "unverified": logs.loc[~logs.verified, ["log", "reason"]].to_dict("records") if len(logs) else [],
               "rows": int(len(rows)), "cells": int(len(cell_df)), "best_three_b": best,
               "summary_csv_rows_citing_logs": ev.summary_rows,
               "rows_with_our_reference_split": int(rows["refs_as_ours"].sum()) if len(rows) else 0,
               "rescore_items": len(items), "rescore_evaluators": [evaluator_name(n) for n in a.rescore_encoders]
               + ([f"nli:{evaluator_name(a.rescore_nli)}"] if a.rescore_nli else []), "timings_s": timings}  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    write_manifest(step_dir, "08_authors_evidence", cfg, timings, inputs=[], results=paths.results,
                   extra={"verified_logs": summary["verified"], "logs": summary["logs"]})  # fmt: skip
    mark(step_dir, cfg, "authors", "finished")
    return {**summary, "written": [str(p) for p in written]}


def _device(cfg: RunConfig) -> str | None:
    from .runs import resolve_device

    return resolve_device(cfg)


def _explanations(test: pd.DataFrame) -> dict[tuple[str, int], list[str]]:
    from .text import parse_perspectives

    return {(s, int(i)): [e for _, e in parse_perspectives(a)]
            for s, i, a in zip(test["split"], test["row_index"], test["answer"])}  # fmt: skip


def write_outputs(out: Path, logs: pd.DataFrame, rows: pd.DataFrame, cell_df: pd.DataFrame,
                  claims: pd.DataFrame | None, rescored: list[pd.DataFrame], jobs: Sequence[RescoreJob],
                  ev: Evidence, best: str, reps: int, seed: int) -> list[Path]:  # fmt: skip
    """Small CSVs only: per-log verdicts, per-row counts (no texts), cells, claims, re-scores."""
    from .runs import atomic_path

    def put(df: pd.DataFrame, name: str) -> Path:
        path = out / name
        with atomic_path(path) as tmp:  # .gz: gzip without a time stamp (same rows, same bytes)
            df.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0} if name.endswith(".gz") else None)
        return path

    written = [put(logs, "logs.csv")]
    if rows.empty:
        return written
    cols = [
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
    ] + (["candidate_tokens"] if "candidate_tokens" in rows else [])
    written.append(put(rows[cols], "rows.csv.gz"))
    written.append(put(cell_df, "cells.csv"))
    if claims is not None:
        written.append(put(claims, "claims.csv"))
    if rescored:
        per = pd.concat(rescored, ignore_index=True)
        written.append(put(per, "rescore_rows.csv"))
        written.append(put(system_scores(per, reps, seed), "rescore_scores.csv"))
        rclaims = paired_claims(per, headline_pairs(best), reps, seed)
        written.append(put(rclaims, "rescore_claims.csv"))
        # the authors' logged ratio on the same situations (their main setting where logged, else any)
        authors_rows = _authors_reference_rows(rows, jobs)
        agree = [{"evaluator": e, **rank_agreement(authors_rows, g[["system", "split", "opv2_row", "ratio"]])}
                 for e, g in per.groupby("evaluator")]  # fmt: skip
        written.append(put(pd.DataFrame(agree), "rank_agreement.csv"))
    return written


def _authors_reference_rows(rows: pd.DataFrame, jobs: Sequence[RescoreJob]) -> pd.DataFrame:
    """The authors' own per-row ratio for the re-scored systems, under their main evaluator setting."""
    main = rows[(rows.evaluator == MAIN_SETTING[0]) & np.isclose(rows.threshold.astype(float), MAIN_SETTING[1])]
    want = {(j.system, j.split) for j in jobs}
    main = main[[(s, sp) in want for s, sp in zip(main.system, main.split)]]
    return main.sort_values("log").drop_duplicates(["system", "split", "opv2_row"])[
        ["system", "split", "opv2_row", "ratio"]]  # fmt: skip


# ---------------------------------------------------------------- opgrpo compare: any model beside the paper's systems
class CompareInputError(ValueError):
    """A ``compare`` input that cannot be scored (one line, naming the file)."""


def read_user_outputs(path: Path, column: str, test: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The user's outputs joined to OP-V2 by prompt; duplicates, empty outputs and unknown prompts are excluded and
    counted. Raises :class:`CompareInputError` when nothing is left."""
    path = Path(path)
    if not path.is_file():
        raise CompareInputError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CompareInputError(f"{path}: not a readable CSV ({type(exc).__name__})") from exc
    for col in ("prompt", column):
        if col not in df.columns:
            raise CompareInputError(f"{path}: column {col!r} not found; columns are {list(df.columns)}")
    counts = {"rows": len(df)}
    dup = df["prompt"].duplicated(keep=False)
    counts["duplicate_prompt_rows"] = int(dup.sum())
    df = df[~dup]
    empty = df[column].map(lambda t: not isinstance(t, str) or not t.strip())
    counts["empty_outputs"] = int(empty.sum())
    df = df[~empty]
    where = test.drop_duplicates("prompt")[["prompt", "split", "row_index", "answer"]]
    joined = df[["prompt", column]].merge(where, on="prompt", how="inner")
    counts["not_opv2_prompts"] = int(len(df) - len(joined))
    counts["matched_situations"] = int(len(joined))
    if joined.empty:
        raise CompareInputError(f"{path}: none of its {counts['rows']} rows has a prompt that is an OP-V2 test "
                                f"situation (after excluding duplicates and empty outputs: {counts})")  # fmt: skip
    return joined.rename(columns={column: "output", "row_index": "opv2_row"}), counts


def profile_systems(profile: str) -> dict[str, pd.DataFrame]:
    """The committed outputs of one profile's own systems (``results/<profile>/generations/*.jsonl``): scored text
    = the core block when the layout is valid, else the whole text."""
    out = {}
    for path in sorted((REPO_ROOT / "results" / profile / "generations").glob("*.jsonl")):
        df = pd.read_json(path, lines=True)
        if df.empty or "prompt" not in df:
            continue
        if "prompt_style" in df:
            df = df[df["prompt_style"].fillna("default") == "default"]
        text = [c if isinstance(c, str) and c.strip() and v else t
                for c, t, v in zip(df.get("core", df["text"]), df["text"], df.get("valid_format", [False] * len(df)))]  # fmt: skip
        out[f"ours ({profile}): {path.stem}"] = pd.DataFrame({"prompt": df["prompt"], "output": text})
    return out


def compare(cfg: RunConfig, candidates: Path, column: str, evaluators: Sequence[str], out_dir: Path,
            name: str | None = None, systems: Sequence[str] = ("all",), with_profile: str | None = None,
            reps: int = 2000) -> dict[str, Any]:  # fmt: skip
    """Score a user's outputs on the OP-V2 situations they cover beside every authors' system logged on those
    situations (re-scored under each evaluator with the same protocol), with paired bootstrap CIs against each."""
    from .data import load_test_splits
    from .plots import save_figure
    from .runs import atomic_write_text
    from .text import eval_candidate_sentences, eval_reference_sentences

    test, _ = load_test_splits(cfg)
    user, counts = read_user_outputs(Path(candidates), column, test)
    label = name or column
    ev = load_evidence(cfg, test)
    matched = {(s, int(r)) for s, r in zip(user["split"], user["opv2_row"])}
    jobs = rescore_jobs(ev, list(systems), sorted({s for s, _ in matched}))
    items = [it for it in job_items(ev, jobs) if (it[1], it[2]) in matched]
    refs = {
        (s, int(r)): eval_reference_sentences(a) for s, r, a in zip(user["split"], user["opv2_row"], user["answer"])
    }
    own = [(label, s, int(r), refs[(s, int(r))], eval_candidate_sentences(o))
           for s, r, o in zip(user["split"], user["opv2_row"], user["output"])]  # fmt: skip
    extra = []
    if with_profile:
        where = dict(zip(user["prompt"], zip(user["split"], user["opv2_row"])))
        for sys_name, df in profile_systems(with_profile).items():
            for p, o in zip(df["prompt"], df["output"]):
                if p in where and isinstance(o, str) and o.strip():
                    s, r = where[p]
                    extra.append((sys_name, s, int(r), refs[(s, int(r))], eval_candidate_sentences(o)))
    own = [it for it in own if it[4]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for ev_name in evaluators:
        per = rescore_sbert(own + extra + items, _encoder(ev_name, _device(cfg)), cfg.authors.rescore_threshold,
                            evaluator_name(ev_name))  # fmt: skip
        others = sorted(set(per.system) - {label})
        res = paired_claims(per, [(label, o) for o in others], reps, cfg.seed)
        res = res[res.split.isin(["all common"]) | ~res.set_index(["a", "b"]).index.isin(
            res[res.split == "all common"].set_index(["a", "b"]).index)]  # fmt: skip
        tables.append(res)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    stem = out_dir / "compare"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    files = [stem.with_suffix(".csv")]
    if not table.empty:
        files += save_figure(fig_compare(table, label, counts["matched_situations"]), out_dir / "compare_figure")
    summary = {"candidates": str(candidates), "column": column, "name": label, **counts,
               "authors_systems": sorted({j.system for j in jobs}), "evaluators": list(evaluators),
               "threshold": cfg.authors.rescore_threshold, "files": [str(f) for f in files]}  # fmt: skip
    atomic_write_text(out_dir / "compare_summary.json", json.dumps(summary, indent=2))
    return {**summary, "table": table}


def fig_compare(table: pd.DataFrame, label: str, matched: int) -> Any:
    """Each system's score on the situations it shares with the user's outputs, the user's beside it."""
    import matplotlib.pyplot as plt

    evs = list(dict.fromkeys(table["evaluator"]))
    fig, axes = plt.subplots(1, len(evs), figsize=(9.5 * len(evs), 0.32 * table.b.nunique() + 2), squeeze=False)
    for ax, e in zip(axes[0], evs):
        t = table[table.evaluator == e].sort_values("score_b")
        y = list(range(len(t)))
        colors = ["tab:green" if str(b).startswith("ours") else "tab:blue" for b in t.b]
        ax.barh(y, t.score_b, color=colors, alpha=0.7, label="system (authors' / ours)")
        ax.scatter(t.score_a, y, color="tab:red", zorder=3, label=f"{label} (same situations)")
        ax.set_yticks(y, [f"{b} (n={n}; Δ {d:+.3f} [{lo:+.3f}, {hi:+.3f}])" for b, n, d, lo, hi in
                          zip(t.b, t.n, t["diff"], t.ci_low, t.ci_high)], fontsize=7)  # fmt: skip
        ax.set_xlabel(f"relative accuracy ({e} @ {float(t.threshold.iloc[0]):.2f})")
        ax.set_title(f"{label}: {matched} matched OP-V2 situations", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
