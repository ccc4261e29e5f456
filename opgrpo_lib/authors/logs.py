"""The authors' evaluation logs as text: our own parser (format: ``../shared/data/authors-eval-logs/README.md``),
the facts their headers tell (split, evaluator, system), and their verification against their own footers and the
summary CSVs that cite them."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PREFIXES = ("/home/zczlyf7/Overton-PPO/", "/p/project1/westai0052/self_rewarding/verl/")


class LogFormatError(ValueError):
    """A file is not an authors' evaluation log (or is cut in a way the parser cannot read)."""


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
            out.append(
                LogRow(
                    cur["row"],
                    "\n".join(cur["prompt"]).strip(),
                    ["\n".join(x).strip() for x in cur["refs"]],
                    ["\n".join(x).strip() for x in cur["cands"]],
                    cur["matches"],
                    int(m.group(1)),
                    int(m.group(2)),
                    cur["dr"],
                    cur["dc"],
                    m.group(3).startswith("✓"),
                )
            )
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
        return (
            f"Qwen3-8B {m.group(2)}" + (" [workflow_350]" if m.group(1) == "workflow_350" else ""),
            "prompting-baseline",
            None,
        )
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
