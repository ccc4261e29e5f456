"""The Chinese arm's translations (notebook 05, after generation, when a style language is ``zh``): the evaluation
situations the prompt-style step uses, translated field by field into Chinese, checked row by row, and the
Chinese evaluator calibrated against the English one on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..chinese import (
    TRANSLATIONS,
    FixtureTranslator,
    LLMTranslator,
    Translator,
    calibrate,
    calibration_pairs,
    check_rows,
    load_translations,
    nli_agreement,
    read_parallel,
    source_rows,
    translate_rows,
)
from ..config import REPO_ROOT, ConfigError, RunConfig, chinese_arm
from ..data import load_prepared
from ..device import resolve_device
from ..lifecycle import rank0, step_run
from ..nli import load_nli
from ..reward import SentenceEncoder
from ..runs import RunPaths, atomic_write_parquet, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any] | None:
    """``<run>/translate/zh.parquet`` (the kept rows, :data:`chinese.COLUMNS`), ``checks.parquet`` (every row's
    checks), ``report.json`` (counts, calibration, and the dropped situations with their reasons) and
    ``results/translate/report.json`` (counts and calibration only: no OP-V2-derived text is ever published)."""
    tc = cfg.translate
    if not chinese_arm(cfg) or not rank0():
        return None
    with step_run(cfg, paths, "translate", force) as step:
        report_path = step.folder / "report.json"
        if step.done and (paths.root / TRANSLATIONS).exists() and report_path.exists():
            return {"translations": load_translations(paths.root), "report": json.loads(report_path.read_text())}
        rows = _source(cfg, paths)
        if rows.empty:
            raise ConfigError(f"translate.splits: no situation of {tc.splits} to translate in {tc.source}")
        device = resolve_device(cfg)
        translator = _translator(cfg, device)
        en_encoder = SentenceEncoder(cfg.models.eval_encoder, device=device, batch_size=tc.batch_size)
        zh_encoder = SentenceEncoder(tc.zh_evaluator, device=device, batch_size=tc.batch_size)
        out = step.begin()
        with step.timed("translate"):
            translated = translate_rows(rows, translator)
        with step.timed("check"):
            kept, checks, report = check_rows(translated, en_encoder, tc.back_translation_min, tc.zh_share_min)
        with step.timed("calibrate"):
            pairs = calibration_pairs(kept)
            thr = cfg.eval.sbert_thresholds[0]
            report["calibration"] = calibrate(en_encoder, zh_encoder, pairs, thr, cfg.seed, tc.min_kappa)
            report["nli_calibration"] = _nli_calibration(cfg, pairs, device)
        report |= {
            "model": tc.model,
            "source": tc.source,
            "en_evaluator": cfg.models.eval_encoder,
            "zh_evaluator": tc.zh_evaluator,
            "en_nli": cfg.models.nli,
            "zh_nli": tc.zh_nli,
        }
        atomic_write_parquet(kept, paths.root / TRANSLATIONS)
        atomic_write_parquet(checks, out / "checks.parquet")
        dropped = checks[checks["reason"].notna()][["prompt", "split", "reason"]].to_dict("records")
        atomic_write_text(report_path, json.dumps(report | {"dropped_rows": dropped}, indent=2, ensure_ascii=False))
        atomic_write_text(paths.results / "translate" / "report.json", json.dumps(report, indent=2))
        step.extra = {"rows": report["rows"], "kept": report["kept"], "validated": report["calibration"]["validated"]}
    return {"translations": kept, "checks": checks, "report": report}


def _source(cfg: RunConfig, paths: RunPaths) -> pd.DataFrame:
    """The English side: the evaluation situations (``eval.parquet``, evaluation order) or a parallel fixture."""
    tc = cfg.translate
    if tc.source == "eval":
        _, ev = load_prepared(paths.data)
    else:
        ev = read_parallel(REPO_ROOT / tc.source)
    return source_rows(ev, tc.splits, tc.split_rows)


def _translator(cfg: RunConfig, device: str) -> Translator:
    """``fixture:<JSONL>``: its human translations; else the named LLM (``lm.load``), greedy, thinking off."""
    tc = cfg.translate
    if tc.model.startswith("fixture:"):
        return FixtureTranslator(read_parallel(REPO_ROOT / Path(tc.model.removeprefix("fixture:"))))
    from ..lm import load
    from ..models import resolve

    return LLMTranslator(load(resolve(tc.model), device), tc.max_new_tokens, tc.batch_size)


def _nli_calibration(cfg: RunConfig, pairs: pd.DataFrame, device: str) -> dict[str, Any]:
    """``zh_nli``'s decisions against ``models.nli``'s on the parallel pairs (or why there are none)."""
    statuses = {}
    models = []
    for key, name in (("models.nli", cfg.models.nli), ("translate.zh_nli", cfg.translate.zh_nli)):
        model, statuses[key] = load_nli(name, device, cfg.eval.nli_batch_size)
        models.append(model)
    if None in models:
        why = "; ".join(f"{k}: {v}" for k, v in statuses.items() if not v.startswith("ran"))
        return {"validated": False, "reason": f"no NLI check ({why})"}
    return nli_agreement(*models, pairs, cfg.translate.min_kappa)
