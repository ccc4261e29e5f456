"""The Chinese arm of the generalisation test (our pre-registered test; the authors released none): translating the
evaluation situations field by field, checking each translated row, scoring Chinese text and calibrating a
multilingual evaluator against the English one.

Translations keep a perspective's name and explanation as separate fields, so a translated reference has exactly
as many perspectives as its source (a row whose count drifts is dropped and counted, never scored). The frame read
back by :func:`load_translations` has the columns of :data:`COLUMNS`; ``references`` and ``references_zh`` are lists
of ``{"name", "explanation"}`` dicts in the same order (the layout of ``perspectives`` in ``eval.parquet``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from .reward import Encoder, greedy_matches

COLUMNS = ["prompt", "split", "references", "situation_zh", "references_zh"]
TRANSLATIONS = Path("translate") / "zh.parquet"  # under the run folder; never committed (OP-V2-derived text)
# One Chinese reference sentence per perspective (the SBERT protocol's "In the perspective of <name>, <explanation>").
ZH_REFERENCE = "从{name}的角度来看，{explanation}"
EN_REFERENCE = "In the perspective of {name}, {explanation}"
REASONS = ("situation_untranslated", "perspective_count", "zh_share", "back_translation")

# CJK unified ideographs (basic, extension A, compatibility, extensions B-F).
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_LAYOUT_TAG_RE = re.compile(r"</?\s*(?:core\s+perspectives|summary)\s*>", re.IGNORECASE)
# A sentence ends after Chinese or English end punctuation (with any closing quotes or brackets), after an English
# full stop followed by a space, the end or a Chinese character (never inside "3.5" or "e.g"), and at a newline.
_ZH_END_RE = re.compile(r"[。！？；!?;]+[”’」』）)\"']*|\.(?=\s|$|[\u3400-\u9fff])[”’」』）)\"']*|\n+")


def strip_layout(text: str) -> str:
    """``text`` without the layout tags (``<core perspectives>``, ``</core perspectives>``, ``<summary>``,
    ``</summary>``)."""
    return _LAYOUT_TAG_RE.sub(" ", text)


def zh_share(text: str) -> float:
    """Share of CJK characters among the letters (CJK or any other alphabet) of ``text``, layout tags removed;
    digits, punctuation and spaces do not count. 0.0 for a text without letters."""
    letters = [c for c in strip_layout(text) if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if _CJK_RE.match(c)) / len(letters)


def split_sentences_zh(text: str) -> list[str]:
    """Sentences of a Chinese (or mixed Chinese-English) text, for the NLI protocol: split after 。！？；and their
    ASCII forms, after an English full stop that ends a sentence, and at newlines (as the English splitter, layout
    tags on their own line come back as their own sentences). Punctuation stays with its sentence."""
    out, start = [], 0
    for m in _ZH_END_RE.finditer(text):
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


def reference_sentences_zh(references: Sequence[dict[str, str]]) -> list[str]:
    """The SBERT protocol's reference sentences of a translated reference: one per perspective (:data:`ZH_REFERENCE`).
    Candidate sentences use the authors' splitter unchanged (``text.eval_candidate_sentences``: it splits on
    。！？ as on .!?)."""
    return [ZH_REFERENCE.format(name=r["name"], explanation=r["explanation"]) for r in references]


def zh_coverage(
    references_zh: Sequence[Sequence[dict[str, str]]],
    candidates: Sequence[str | None],
    encoder: Encoder,
    threshold: float,
    prompts: Sequence[str] | None = None,
) -> pd.DataFrame:
    """SBERT coverage of Chinese outputs (``coverage.sbert_matches``'s columns and greedy one-to-one matching), one
    row per situation with a candidate (its ``prompt`` when given); a missing candidate (None) or one without
    sentences is left out."""
    from .text import eval_candidate_sentences

    keys = list(prompts) if prompts is not None else [None] * len(candidates)
    rows = [
        (k, reference_sentences_zh(r), eval_candidate_sentences(c))
        for k, r, c in zip(keys, references_zh, candidates)
        if c
    ]
    rows = [(k, r, c) for k, r, c in rows if r and c]
    texts = sorted({s for _, r, c in rows for s in (*r, *c)})
    emb = encoder.encode(texts).astype(np.float64) if texts else np.zeros((0, 1))
    index = {s: i for i, s in enumerate(texts)}
    records = []
    for key, refs, cands in rows:
        sim = emb[[index[s] for s in refs]] @ emb[[index[s] for s in cands]].T
        matched = greedy_matches(sim, threshold)
        records.append((key, matched, len(refs), len(cands), matched / len(refs), matched == len(refs)))
    cols = ["prompt", "matched", "n_references", "n_candidate_sentences", "ratio", "hit_all"]
    return pd.DataFrame(records, columns=cols)


# ---------------------------------------------------------------- translators
class Translator(Protocol):
    def translate(self, texts: list[str], target: Literal["zh", "en"]) -> list[str | None]:
        """One translation per text into ``target`` (None: no usable translation)."""


PROMPTS = {
    "zh": (
        "Translate the following English text into Simplified Chinese. Keep its meaning and tone; translate "
        "every sentence. Reply with the translation only.\n\n{text}"
    ),
    "en": (
        "Translate the following Chinese text into English. Keep its meaning and tone; translate every sentence. "
        "Reply with the translation only.\n\n{text}"
    ),
}


def chat_prompt(tokenizer: Any, message: str) -> str:
    """One user turn through the chat template with thinking off (Qwen3's ``enable_thinking=False``) where the
    template accepts it."""
    conv = [{"role": "user", "content": message}]
    try:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    except TypeError:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


class LLMTranslator:
    """An instruction LLM (``lm.load``), greedy, one prompt per distinct text; a clipped output is no translation."""

    def __init__(self, lm: Any, max_new_tokens: int, batch_size: int):
        self.lm, self.max_new_tokens, self.batch_size = lm, max_new_tokens, batch_size

    def translate(self, texts: list[str], target: Literal["zh", "en"]) -> list[str | None]:
        from .lm import sample_clipped

        distinct = sorted({t for t in texts if t.strip()})
        done: dict[str, str | None] = {}
        for i in range(0, len(distinct), self.batch_size):
            chunk = distinct[i : i + self.batch_size]
            prompts = [chat_prompt(self.lm.tokenizer, PROMPTS[target].format(text=t)) for t in chunk]
            outs, clipped = sample_clipped(self.lm, prompts, self.max_new_tokens, 0.0, chat=False)
            for t, o, c in zip(chunk, outs, clipped):
                o = o.split("</think>")[-1].strip()
                done[t] = None if c or not o else o
        return [done.get(t) for t in texts]


class FixtureTranslator:
    """The human translations of a parallel fixture (:func:`read_parallel`) standing in for the LLM: English ->
    Chinese by lookup of its fields, Chinese -> English the reverse; a text it has no translation for gets None."""

    def __init__(self, parallel: pd.DataFrame):
        self.maps: dict[str, dict[str, str]] = {"zh": {}, "en": {}}
        for rec in parallel.to_dict("records"):
            pairs = [(rec["prompt"], rec["situation_zh"])]
            for p in rec["references"]:
                pairs += [(p["name"], p.get("name_zh")), (p["explanation"], p.get("explanation_zh"))]
            for en, zh in pairs:
                if zh:
                    self.maps["zh"].setdefault(en, zh)
                    self.maps["en"].setdefault(zh, en)

    def translate(self, texts: list[str], target: Literal["zh", "en"]) -> list[str | None]:
        return [self.maps[target].get(t) for t in texts]


def read_parallel(path: Path) -> pd.DataFrame:
    """A parallel JSONL fixture: per line ``prompt``, ``split``, ``situation_zh`` and ``perspectives`` (each
    ``name``, ``explanation`` and their human translations ``name_zh``, ``explanation_zh``; a translation may be
    missing, which the checks must catch). -> ``prompt``, ``split``, ``situation_zh``, ``references`` (each perspective
    dict as written). A malformed line is a one-line error naming the file and line."""
    from .config import SPLITS

    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            persp = rec["perspectives"]
            ok = isinstance(rec["prompt"], str) and rec["split"] in SPLITS and isinstance(persp, list) and persp
            ok = ok and all(isinstance(p.get("name"), str) and isinstance(p.get("explanation"), str) for p in persp)
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(
                f"{path}:{i}: expected prompt, a split of {list(SPLITS)}, situation_zh and a non-empty list of "
                "perspectives with name and explanation"
            )
        rows.append(
            {
                "prompt": rec["prompt"],
                "split": rec["split"],
                "situation_zh": rec.get("situation_zh"),
                "references": persp,
            }
        )
    return pd.DataFrame(rows, columns=["prompt", "split", "situation_zh", "references"])


def source_rows(frame: pd.DataFrame, splits: Sequence[str], split_rows: int) -> pd.DataFrame:
    """The situations to translate: the first ``split_rows`` of each split in ``splits``, in the frame's order (the
    evaluation order, as ``generate.eval_items``). ``frame`` has ``prompt``, ``split`` and ``perspectives`` or
    ``references`` (lists of ``{name, explanation}``) -> ``prompt``, ``split``, ``references``."""
    refs = frame["references"] if "references" in frame else frame["perspectives"]
    clean = [[{"name": p["name"], "explanation": p["explanation"]} for p in r] for r in refs]
    full = pd.DataFrame({"prompt": frame["prompt"].tolist(), "split": frame["split"].tolist(), "references": clean})
    parts = [full[full["split"] == s].head(split_rows) for s in splits]
    return pd.concat(parts, ignore_index=True) if parts else full.iloc[:0]


def translate_rows(rows: pd.DataFrame, translator: Translator) -> pd.DataFrame:
    """Each field of each row into Chinese, then back into English: ``rows`` plus ``situation_zh``,
    ``references_zh`` (``{name, explanation}`` with None where no translation came back), ``situation_back`` and
    ``explanations_back`` (the back-translations; None where there was nothing to translate back)."""
    en = [t for r in rows.to_dict("records") for t in _fields(r["prompt"], r["references"])]
    zh = dict(zip(en, translator.translate(en, "zh")))
    checked = [t for r in rows.to_dict("records") for t in [r["prompt"]] + [p["explanation"] for p in r["references"]]]
    zh_texts = sorted({zh[t] for t in checked if zh.get(t)})  # names are too short to compare: not sent back
    back = dict(zip(zh_texts, translator.translate(zh_texts, "en")))
    out = rows.copy()
    out["situation_zh"] = [zh.get(p) for p in rows["prompt"]]
    out["references_zh"] = [
        [{"name": zh.get(p["name"]), "explanation": zh.get(p["explanation"])} for p in refs]
        for refs in rows["references"]
    ]
    out["situation_back"] = [back.get(z) if z else None for z in out["situation_zh"]]
    out["explanations_back"] = [
        [back.get(p["explanation"]) if p["explanation"] else None for p in refs] for refs in out["references_zh"]
    ]
    return out


def _fields(situation: str, references: Sequence[dict[str, str]]) -> list[str]:
    return [situation] + [t for p in references for t in (p["name"], p["explanation"])]


# ---------------------------------------------------------------- per-row checks
def check_rows(
    translated: pd.DataFrame, en_encoder: Encoder, back_min: float, share_min: float
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(kept rows with :data:`COLUMNS`, one check record per row, report). A row fails ``situation_untranslated``
    (no Chinese situation), ``perspective_count`` (fewer perspectives with both fields translated than in English),
    ``zh_share`` (CJK share of its Chinese fields below ``share_min``) or ``back_translation`` (the smallest cosine,
    under ``en_encoder``, of the situation or an explanation and its back-translation below ``back_min``; names are
    too short to compare). A failing row is dropped and counted under its first failing check (in :data:`REASONS`
    order); ``failed_checks`` counts every failed check."""
    recs = translated.to_dict("records")
    pairs = [pair for r in recs for pair in _back_pairs(r)]
    texts = sorted({t for pair in pairs for t in pair if t})
    emb = en_encoder.encode(texts).astype(np.float64) if texts else np.zeros((0, 1))
    index = {t: i for i, t in enumerate(texts)}
    sim = lambda a, b: float(emb[index[a]] @ emb[index[b]]) if a and b else 0.0  # noqa: E731
    checks = []
    for r in recs:
        situation = _text(r["situation_zh"])
        zh_fields = [situation] + [_text(t) for p in r["references_zh"] for t in p.values()]
        n_zh = sum(1 for p in r["references_zh"] if _text(p["name"]) and _text(p["explanation"]))
        back = min((sim(a, b) for a, b in _back_pairs(r)), default=0.0)
        share = zh_share(" ".join(zh_fields))
        bad = (not situation, n_zh != len(r["references"]), share < share_min, back < back_min)
        failed = [reason for reason, b in zip(REASONS, bad) if b]
        checks.append(
            {
                "prompt": r["prompt"],
                "split": r["split"],
                "n_perspectives": len(r["references"]),
                "n_translated": n_zh,
                "zh_share": share,
                "back_translation": back,
                "failed": failed,
                "reason": failed[0] if failed else None,
            }
        )
    checks_df = pd.DataFrame(checks)
    keep = [c["reason"] is None for c in checks]
    kept = translated.loc[keep, COLUMNS].reset_index(drop=True)
    return kept, checks_df, _check_report(checks_df, back_min, share_min)


def _text(value: Any) -> str:
    """A translated field as text ("" for a missing one: None, or NaN once in a frame)."""
    return value.strip() if isinstance(value, str) else ""


def _back_pairs(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """(English field, its back-translation or "") for the situation and each explanation."""
    out = [(rec["prompt"], _text(rec["situation_back"]))]
    return out + [(p["explanation"], _text(b)) for p, b in zip(rec["references"], rec["explanations_back"])]


def _check_report(checks: pd.DataFrame, back_min: float, share_min: float) -> dict[str, Any]:
    """Counts only (no text: the committed report never holds OP-V2-derived text)."""
    first = Counter(r for r in checks["reason"] if r)
    every = Counter(r for failed in checks["failed"] for r in failed)
    per_split = {
        s: {"rows": int(len(g)), "kept": int(g["reason"].isna().sum())} for s, g in checks.groupby("split", sort=False)
    }
    return {
        "rows": int(len(checks)),
        "kept": int(checks["reason"].isna().sum()),
        "dropped": {r: int(first.get(r, 0)) for r in REASONS},
        "failed_checks": {r: int(every.get(r, 0)) for r in REASONS},
        "per_split": per_split,
        "thresholds": {"back_translation_min": back_min, "zh_share_min": share_min},
    }


def load_translations(root: Path) -> pd.DataFrame:
    """The kept translations of a run (``<root>/translate/zh.parquet``): :data:`COLUMNS`, one row per situation,
    ``prompt`` the English situation (the join key). A row whose Chinese reference does not have its English
    perspective count is refused (one line naming the file and situation)."""
    path = Path(root) / TRANSLATIONS
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no translations; run `opgrpo translate` (notebook 05) with zh in styles.languages"
        )
    df = pd.read_parquet(path)
    df["references"] = [[dict(p) for p in r] for r in df["references"]]
    df["references_zh"] = [[dict(p) for p in r] for r in df["references_zh"]]
    for prompt, en, zh in zip(df["prompt"], df["references"], df["references_zh"]):
        if len(en) != len(zh) or not all(p.get("name") and p.get("explanation") for p in zh):
            raise ValueError(f"{path}: {prompt[:60]!r}: {len(zh)} Chinese perspectives for {len(en)} English ones")
    return df[COLUMNS]


# ---------------------------------------------------------------- evaluator calibration
PAIR_COLUMNS = [
    "situation",
    "candidate_en",
    "reference_en",
    "premise_en",
    "candidate_zh",
    "reference_zh",
    "premise_zh",
    "same",
]


def calibration_pairs(translations: pd.DataFrame) -> pd.DataFrame:
    """Parallel (candidate, reference) pairs of each translated situation, in English and in Chinese: every
    perspective's explanation (a candidate sentence) against every perspective's reference sentence (SBERT) and
    explanation (``premise_*``: NLI) of the same situation (its own: ``same``; the others: the hard negatives the
    evaluator must tell apart). Limitation
    (measured on the fixture): a ``same`` pair is a containment (the reference sentence holds the explanation), so it
    is easy and even an English-only encoder passes the kappa rule on Chinese; parallel pairs from real outputs
    (English output sentences and their translations) are the stronger test: :func:`calibrate` takes any pairs."""
    rows = []
    for rec in translations.to_dict("records"):
        en, zh = rec["references"], rec["references_zh"]
        for i, (ce, cz) in enumerate(zip(en, zh)):
            for j, (re_, rz) in enumerate(zip(en, zh)):
                rows.append(
                    {
                        "situation": rec["prompt"],
                        "candidate_en": ce["explanation"],
                        "reference_en": EN_REFERENCE.format(**re_),
                        "premise_en": re_["explanation"],
                        "candidate_zh": cz["explanation"],
                        "reference_zh": ZH_REFERENCE.format(**rz),
                        "premise_zh": rz["explanation"],
                        "same": i == j,
                    }
                )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two binary decisions; None when undefined (both raters constant and equal)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return None
    po = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe >= 1.0 else (po - pe) / (1 - pe)


def _cosines(encoder: Encoder, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
    texts = sorted(set(left) | set(right))
    emb = encoder.encode(texts).astype(np.float64)
    index = {t: i for i, t in enumerate(texts)}
    return np.einsum("ij,ij->i", emb[[index[t] for t in left]], emb[[index[t] for t in right]])


def _best_threshold(target: np.ndarray, cos: np.ndarray, prior: float) -> tuple[float | None, float | None]:
    """The threshold on ``cos`` whose decisions (cos >= t) agree best with ``target`` by Cohen's kappa; ties go to
    the threshold closest to ``prior`` (candidates: every observed cosine and ``prior``). (None, None): undefined."""
    best: tuple[float, float, float] | None = None  # (kappa, -distance, threshold)
    for t in sorted({*cos.tolist(), prior}):
        k = cohen_kappa(target, cos >= t)
        if k is not None and (best is None or (k, -abs(t - prior)) > best[:2]):
            best = (k, -abs(t - prior), t)
    return (None, None) if best is None else (best[2], best[0])


def calibrate(
    en_encoder: Encoder,
    zh_encoder: Encoder,
    pairs: pd.DataFrame,
    en_threshold: float,
    seed: int = 0,
    min_kappa: float = 0.6,
) -> dict[str, Any]:
    """The Chinese evaluator's threshold that reproduces the English evaluator's match decisions. Target: the
    English evaluator's decision (cosine of ``candidate_en``, ``reference_en`` >= ``en_threshold``). Situations
    are split in two halves (seeded); the zh threshold maximises Cohen's kappa (not raw agreement, which a
    threshold rejecting everything inflates when matches are rare) on the calibration half; kappa and agreement are
    reported on the held-out half. ``validated`` (the rule fixed in advance): held-out kappa >= ``min_kappa``."""
    situations = sorted(set(pairs["situation"]))
    if len(situations) < 2:
        return {"validated": False, "reason": f"{len(situations)} situation(s): two halves need at least 2"}
    order = np.random.default_rng(seed).permutation(len(situations))
    cal_set = {situations[i] for i in order[: (len(situations) + 1) // 2]}
    target = _cosines(en_encoder, pairs["candidate_en"].tolist(), pairs["reference_en"].tolist()) >= en_threshold
    zh_cos = _cosines(zh_encoder, pairs["candidate_zh"].tolist(), pairs["reference_zh"].tolist())
    cal = pairs["situation"].isin(cal_set).to_numpy()
    if target[cal].all() or not target[cal].any():
        n, hits = int(cal.sum()), int(target[cal].sum())
        why = f"the English evaluator decides all {n} calibration pairs alike ({hits} match): nothing to calibrate"
        return {"criterion": "cohen_kappa", "zh_threshold": None, "validated": False, "reason": why}
    threshold, cal_kappa = _best_threshold(target[cal], zh_cos[cal], en_threshold)
    out: dict[str, Any] = {
        "criterion": "cohen_kappa",
        "en_threshold": en_threshold,
        "zh_threshold": threshold,
        "min_kappa": min_kappa,
        "seed": seed,
    }
    out["calibration"] = _half(target[cal], zh_cos[cal], threshold, len(cal_set)) | {"kappa": cal_kappa}
    out["heldout"] = _half(target[~cal], zh_cos[~cal], threshold, len(situations) - len(cal_set))
    kappa = out["heldout"]["kappa"]
    out["validated"] = kappa is not None and kappa >= min_kappa
    if not out["validated"]:
        why = "undefined" if kappa is None else f"{kappa:.3f} < {min_kappa}"
        out["reason"] = f"held-out kappa {why}: the Chinese numbers are unvalidated"
    return out


def _half(target: np.ndarray, cos: np.ndarray, threshold: float | None, situations: int) -> dict[str, Any]:
    """Agreement, kappa and match rates of one half at the chosen threshold."""
    pred = cos >= threshold if threshold is not None else np.zeros_like(target)
    return {
        "situations": situations,
        "pairs": int(target.size),
        "en_matches": int(target.sum()),
        "zh_matches": int(pred.sum()),
        "agreement": float(np.mean(pred == target)) if target.size else None,
        "kappa": cohen_kappa(target, pred) if threshold is not None else None,
    }


# ---------------------------------------------------------------- NLI on Chinese
def nli_agreement(en_nli: Any, zh_nli: Any, pairs: pd.DataFrame, min_kappa: float = 0.6) -> dict[str, Any]:
    """The multilingual NLI model's decisions on the Chinese pairs against the English NLI model's on their English
    originals (premise: a reference explanation; hypothesis: a candidate explanation; decision: P(entailment) above
    the protocol's threshold, so nothing is fitted and every pair counts as held out). ``validated`` (fixed in
    advance): Cohen's kappa >= ``min_kappa``; else the Chinese NLI numbers are flagged unvalidated."""
    from .nli import NLI_THRESHOLD

    if pairs.empty:
        return {"validated": False, "reason": "no calibration pairs"}
    en = en_nli.entailment(pairs["premise_en"].tolist(), pairs["candidate_en"].tolist()) > NLI_THRESHOLD
    zh = zh_nli.entailment(pairs["premise_zh"].tolist(), pairs["candidate_zh"].tolist()) > NLI_THRESHOLD
    kappa = cohen_kappa(en, zh)
    out: dict[str, Any] = {
        "criterion": "cohen_kappa",
        "threshold": NLI_THRESHOLD,
        "min_kappa": min_kappa,
        "situations": int(pairs["situation"].nunique()),
        "pairs": int(len(pairs)),
        "en_entailed": int(en.sum()),
        "zh_entailed": int(zh.sum()),
        "agreement": float(np.mean(en == zh)),
        "kappa": kappa,
        "validated": kappa is not None and kappa >= min_kappa,
    }
    if not out["validated"]:
        why = "undefined" if kappa is None else f"{kappa:.3f} < {min_kappa}"
        out["reason"] = f"kappa {why}: the Chinese NLI numbers are unvalidated"
    return out
